-- GET /sleep: one query that waits 5 ms inside PostgreSQL (pg_sleep). On a non-blocking engine the
-- worker serves other requests meanwhile, so one worker with a pool of 16 connections answers up
-- to 16 / 5 ms = 3,200 of these a second; a worker that blocked on its query would answer 200.
local route = require "engine.route"
local db = require "engine.db"

route.get("/sleep", function()
  db.one("SELECT pg_sleep(0.005) AS slept")
  return 200, { slept = true }
end)

-- GET /hello: no database; its latency beside /sleep shows whether the loop ever waits.
route.get("/hello", function()
  return 200, { hello = "world" }
end)
