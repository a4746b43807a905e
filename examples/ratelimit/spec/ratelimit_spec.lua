-- The rate-limit example: a before hook takes one token per request from the client address's
-- engine.limit bucket and answers 429 with Retry-After past it.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local P = require "support.platform"

local SCRIPTS = "scripts:examples/ratelimit/scripts"
local CUSTOMER = "/v2/integrations/customer"

describe("example ratelimit", function()
  local app = spec.app { scripts = SCRIPTS, settings = { ratelimit_per_second = 0.5, ratelimit_burst = 3 } }
  after_each(function() spec.clock.reset() end)

  local function get(path, peer) return app.request("GET", path, { peer = peer or "192.0.2.1:1000" }) end

  it("lets a client make burst requests, then answers 429 with Retry-After until a token is back", function()
    spec.clock.freeze(1700000000000)
    for left = 2, 0, -1 do
      local res = get(CUSTOMER)
      P.failed(res, 401) -- the handler ran: no token
      assert.equal(tostring(left), res.headers["x-ratelimit-remaining"])
    end
    local res = get(CUSTOMER)
    assert.equal("too many requests: retry after 2 seconds", P.failed(res, 429))
    assert.equal("2", res.headers["retry-after"])
    assert.equal("0", res.headers["x-ratelimit-remaining"])
    spec.clock.advance(1000)
    assert.equal("1", get(CUSTOMER).headers["retry-after"])
    spec.clock.advance(1000)
    P.failed(get(CUSTOMER), 401)
    P.failed(get(CUSTOMER), 429)
  end)

  it("counts per client address, not per port", function()
    spec.clock.freeze(1700001000000)
    for _ = 1, 3 do P.failed(get(CUSTOMER, "198.51.100.1:1"), 401) end
    P.failed(get(CUSTOMER, "198.51.100.1:2"), 429)
    P.failed(get(CUSTOMER, "198.51.100.2:1"), 401)
  end)

  it("answers in the envelope of the route asked for, unknown paths included, and never limits /healthz", function()
    spec.clock.freeze(1700002000000)
    local peer = "203.0.113.9:5"
    for _ = 1, 3 do get("/v2/nope", peer) end
    P.failed(get("/v2/nope", peer), 429)
    local res = get("/v2/integrations/some-customer", peer)
    assert.equal("too many requests: retry after 2 seconds", P.rest_failed(res, 429, "rate_limited"))
    assert.equal("2", res.headers["retry-after"])
    res = get("/healthz", peer)
    assert.equal(200, res.status)
    assert.is_nil(res.headers["x-ratelimit-remaining"])
  end)
end)

describe("example ratelimit on a real server with 2 workers", function()
  local srv = spec.server { scripts = SCRIPTS, workers = 2,
    settings = { ratelimit_per_second = 0.001, ratelimit_burst = 5 } }

  it("shares each client's bucket between the workers: 5 of 12 requests on new connections pass", function()
    local passed, limited = 0, 0
    for _ = 1, 12 do
      local res = srv.request("GET", "/v2/nope", { headers = { Connection = "close" } })
      if res.status == 404 then passed = passed + 1 elseif res.status == 429 then limited = limited + 1 end
    end
    assert.same({ 5, 7 }, { passed, limited })
  end)
end)
