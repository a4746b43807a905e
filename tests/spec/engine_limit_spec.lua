-- engine.limit: token buckets by key, in C, shared by the workers of one process.
local spec = require "engine.spec"
local limit = require "engine.limit"
local testing = require "engine.testing"

local SCRIPTS = "tests/fixtures/engine/scripts"
local SCHEMA = "tests/fixtures/engine/schema"

describe("engine.limit", function()
  after_each(function() spec.clock.reset() end)

  it("starts full, refuses past the burst with the whole seconds to wait, and refills at the rate", function()
    spec.clock.freeze(1700000000000)
    local key = "k-" .. require("engine.crypto").uuid4()
    assert.same({ true, 2 }, { limit.take("t", key, 0.5, 3) })
    assert.same({ true, 1 }, { limit.take("t", key, 0.5, 3) })
    assert.same({ true, 0 }, { limit.take("t", key, 0.5, 3) })
    assert.same({ false, 2 }, { limit.take("t", key, 0.5, 3) }) -- one token at 0.5 a second
    spec.clock.advance(1500)
    assert.same({ false, 1 }, { limit.take("t", key, 0.5, 3) }) -- 0.75 tokens: 500 ms to go, rounded up
    spec.clock.advance(500)
    assert.same({ true, 0 }, { limit.take("t", key, 0.5, 3) })
    -- another name is another bucket; a cost takes several tokens
    assert.same({ true, 0 }, { limit.take("other", key, 0.5, 3, 3) })
  end)

  it("forgets a bucket on reset", function()
    spec.clock.freeze(1700000000000)
    assert.is_true((limit.take("r", "x", 1, 1)))
    assert.is_false((limit.take("r", "x", 1, 1)))
    limit.reset("r", "x")
    assert.is_true((limit.take("r", "x", 1, 1)))
  end)

  it("counts hits in a fixed window that starts at the first hit, reads without counting, and ends", function()
    spec.clock.freeze(1700000000000)
    local key = "w-" .. require("engine.crypto").uuid4()
    assert.same({ 0 }, { limit.count("win", key, 10) }) -- nothing counted: nothing held
    assert.same({ 1, 1700000000000, 1700000000000 }, { limit.hit("win", key, 10) })
    spec.clock.advance(4000)
    assert.same({ 3, 1700000000000, 1700000004000 }, { limit.hit("win", key, 10, 2) })
    assert.same({ 3, 1700000000000, 1700000004000 }, { limit.count("win", key, 10) })
    spec.clock.advance(6000) -- 10 s after the first hit: the window is over
    assert.same({ 0 }, { limit.count("win", key, 10) })
    assert.same({ 1, 1700000010000, 1700000010000 }, { limit.hit("win", key, 10) })
    limit.reset("win", key)
    assert.same({ 0 }, { limit.count("win", key, 10) })
    assert.has_error(function() limit.hit("win", key, 0) end)
    assert.has_error(function() limit.hit("win", key, 10, 0) end)
    assert.has_error(function() limit.count("win", key) end)
  end)

  it("raises on bad arguments", function()
    assert.has_error(function() limit.take("t", "k", 0, 1) end)
    assert.has_error(function() limit.take("t", "k", 1, 0) end)
    assert.has_error(function() limit.take("t", "k", 1, 2, 3) end)
    assert.has_error(function() limit.take("", "k", 1, 2) end)
    assert.has_error(function() limit.take("t", string.rep("k", 600), 1, 2) end)
    assert.has_error(function() limit.take("t", nil, 1, 2) end)
  end)
end)

describe("engine.limit on a real server", function()
  local srv = spec.server { scripts = SCRIPTS, schema = SCHEMA, workers = 2 }

  it("shares one bucket between the workers: 5 of 20 requests on 20 connections pass", function()
    -- Both workers listen only once both loaded their scripts: wait until each has answered.
    local seen, nseen = {}, 0
    for i = 1, 400 do
      local state = srv.request("GET", "/limited/probe-" .. i).json.state
      if not seen[state] then seen[state], nseen = true, nseen + 1 end
      if nseen == 2 then break end
      testing.sleep(10)
    end
    assert.equal(2, nseen)
    local counts, states, nstates = {}, {}, 0
    for _ = 1, 20 do
      local res = srv.request("GET", "/limited/shared")
      counts[res.status] = (counts[res.status] or 0) + 1
      if not states[res.json.state] then states[res.json.state], nstates = true, nstates + 1 end
      if res.status == 429 then assert.equal("1000", res.headers["retry-after"]) end
    end
    assert.same({ [200] = 5, [429] = 15 }, counts)
    assert.equal(2, nstates) -- both workers answered: the bucket is not per worker
    assert.equal(200, srv.request("GET", "/limited/another-key").status)
  end)
end)
