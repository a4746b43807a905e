-- GET /hello: the smallest JSON route, measured against bench/yardstick.c.
local route = require "engine.route"

route.get("/hello", function()
  return 200, { hello = "world" }
end)
