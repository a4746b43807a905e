-- GET /row/{id}: one indexed SQLite read per request (table seeded by schema/0001_bench.sql).
local route = require "engine.route"
local db = require "engine.db"

route.get("/row/{id}", function(req)
  local id = math.tointeger(tonumber(req.params.id))
  if id == nil then
    return 400, { error = "bad_request", message = "id must be an integer" }
  end
  local row = db.one("SELECT id, name, score FROM bench_rows WHERE id = ?", id)
  if row == nil then
    return 404, { error = "not_found" }
  end
  return 200, row
end)
