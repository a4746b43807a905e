-- POST /v2/integrations/token (API.md section 2) and the token rules of 1.2.
package.path = "tests/spec/?.lua;" .. package.path
local spec = require "engine.spec"
local crypto = require "engine.crypto"
local config = require "engine.config"
local P = require "support.platform"

local TOKEN = "/v2/integrations/token"
local DAY = 86400 * 1000

describe("POST /v2/integrations/token", function()
  local app = spec.app { scripts = "scripts", schema = "schema" }
  after_each(function() spec.clock.reset() end)

  local function post(body, headers)
    return app.request("POST", TOKEN, { json = body, headers = headers })
  end

  it("issues a customer token that GET /customer accepts, raw or Bearer", function()
    local c = P.customer(app)
    local res = post({ Id = c.id, Secret = c.secret, Entity = "customer" }, { ["X-Request-Id"] = "tok-1" })
    local token = P.ok(res, "tok-1")
    assert.matches("^v1%.[%w_-]+%.[%w_-]+$", token)
    local claims = crypto.verify(token)
    assert.equal("customer", claims.typ)
    assert.equal(c.id, claims.sub)
    assert.equal(c.id, P.ok(app.request("GET", "/v2/integrations/customer", { headers = P.auth(token) })).CustomerID)
    assert.equal(c.id, P.ok(app.request("GET", "/v2/integrations/customer",
      { headers = P.auth("Bearer " .. token) })).CustomerID)
    assert.equal(c.id, P.ok(app.request("GET", "/v2/integrations/customer",
      { headers = P.auth("bearer   " .. token) })).CustomerID)
  end)

  it("issues an app token", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    local token = P.ok(post({ Id = a.id, Secret = a.secret, Entity = "app" }))
    local claims = crypto.verify(token)
    assert.equal("app", claims.typ)
    assert.equal(a.id, claims.sub)
  end)

  it("expires tokens after 90 days by default", function()
    spec.clock.freeze(1718445600000)
    local c = P.customer(app)
    local claims = crypto.verify(c.token)
    assert.equal(1718445600000 + 90 * DAY, claims.exp)
    spec.clock.advance(90 * DAY - 1000)
    P.ok(app.request("GET", "/v2/integrations/customer", { headers = P.auth(c.token) }))
    spec.clock.advance(1000)
    local err = P.failed(app.request("GET", "/v2/integrations/customer", { headers = P.auth(c.token) }), 401)
    assert.equal("token expired", err)
  end)

  it("honours token_ttl_days", function()
    config.settings().token_ttl_days = 2
    spec.clock.freeze(1718445600000)
    local ok, c = pcall(P.customer, app)
    config.settings().token_ttl_days = nil
    assert.is_true(ok, c)
    assert.equal(1718445600000 + 2 * DAY, crypto.verify(c.token).exp)
  end)

  it("answers 400 for bad bodies and fields", function()
    local cases = {
      { nil, "request body is empty: expected a JSON object" },
      { "{not json", nil },
      { "[]", "request body must be a JSON object" },
      { '"x"', "request body must be a JSON object" },
      { '{"Secret":"s","Entity":"app"}', "Id is required" },
      { '{"Id":5,"Secret":"s","Entity":"app"}', "Id must be a string" },
      { '{"Id":"  ","Secret":"s","Entity":"app"}', "Id must not be empty" },
      { '{"Id":"i","Entity":"app"}', "Secret is required" },
      { '{"Id":"i","Secret":null,"Entity":"app"}', "Secret is required" },
      { '{"Id":"i","Secret":true,"Entity":"app"}', "Secret must be a string" },
      { '{"Id":"i","Secret":"s"}', "Entity is required" },
      { '{"Id":"i","Secret":"s","Entity":"user"}', "Entity must be customer or app" },
      { '{"Id":"i","Secret":"s","Entity":"Customer"}', "Entity must be customer or app" },
    }
    for _, case in ipairs(cases) do
      local err = P.failed(app.request("POST", TOKEN, { body = case[1] }), 400)
      if case[2] then assert.equal(case[2], err) else assert.matches("^request body is not valid JSON", err) end
    end
  end)

  it("answers 401 alike for an unknown Id, a wrong Secret and the wrong Entity", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    local e1 = P.failed(post({ Id = crypto.uuid4(), Secret = c.secret, Entity = "customer" }), 401)
    local e2 = P.failed(post({ Id = c.id, Secret = c.secret .. "x", Entity = "customer" }), 401)
    local e3 = P.failed(post({ Id = c.id, Secret = c.secret, Entity = "app" }), 401)
    local e4 = P.failed(post({ Id = a.id, Secret = a.secret, Entity = "customer" }), 401)
    local e5 = P.failed(post({ Id = a.id, Secret = c.secret, Entity = "app" }), 401)
    for _, e in ipairs({ e1, e2, e3, e4, e5 }) do assert.equal("invalid Id or Secret", e) end
  end)

  it("never accepts one type's token on the other type's endpoints", function()
    local c = P.customer(app)
    local a = P.app(app, c.token)
    P.failed(app.request("GET", "/v2/integrations/customer", { headers = P.auth(a.token) }), 401)
    P.failed(app.request("DELETE", "/v2/integrations/customer", { headers = P.auth(a.token) }), 401)
    P.failed(app.request("POST", "/v2/integrations/app", { json = P.APP_BODY, headers = P.auth(a.token) }), 401)
    P.failed(app.request("DELETE", "/v2/integrations/app", { headers = P.auth(c.token) }), 401)
    P.failed(app.request("GET", "/v2/integrations/app_setting", { headers = P.auth(c.token) }), 401)
    P.rest_failed(app.request("GET", "/v2/integrations/" .. c.id, { headers = P.auth(a.token) }), 401, "unauthorized")
    -- and neither type's endpoints changed anything
    assert.equal(1, P.count(app, "apps WHERE customer_id = ?", c.id))
  end)

  it("rejects missing, malformed and tampered tokens with 401", function()
    local c = P.customer(app)
    local GET = function(h) return app.request("GET", "/v2/integrations/customer", { headers = h }) end
    assert.equal("missing Authorization token", P.failed(GET(nil), 401))
    assert.equal("missing Authorization token", P.failed(GET({ Authorization = "Bearer " }), 401))
    assert.equal("invalid token", P.failed(GET(P.auth("garbage")), 401))
    -- the reference's example token: base64 of the id
    assert.equal("invalid token", P.failed(GET(P.auth(crypto.to_base64(c.id))), 401))
    local head, payload, tag = c.token:match("^(v1)%.([^.]+)%.([^.]+)$")
    local plain = crypto.from_base64url(payload)
    local at = assert(plain:find(c.id, 1, true))
    local forged = plain:sub(1, at - 1) .. crypto.uuid4() .. plain:sub(at + #c.id)
    assert.not_equal(plain, forged)
    assert.equal("invalid token", P.failed(GET(P.auth(head .. "." .. crypto.to_base64url(forged) .. "." .. tag)), 401))
    local flipped = tag:sub(1, -2) .. (tag:sub(-1) == "A" and "B" or "A")
    assert.equal("invalid token", P.failed(GET(P.auth(head .. "." .. payload .. "." .. flipped)), 401))
  end)

  describe("brute-force guard", function()
    it("locks an Id after 5 failures for the rest of a 5-minute window", function()
      spec.clock.freeze(1718445600000)
      local c = P.customer(app)
      local bad = { Id = c.id, Secret = "wrong", Entity = "customer" }
      for _ = 1, 5 do
        P.failed(post(bad), 401)
        spec.clock.advance(10 * 1000)
      end
      -- 50 s after the first failure: locked for the remaining 250 s, even with the right secret
      local res = post({ Id = c.id, Secret = c.secret, Entity = "customer" })
      assert.equal("too many failed attempts for this Id: retry after 250 seconds", P.failed(res, 429))
      assert.equal("250", res.headers["retry-after"])
      spec.clock.advance(249 * 1000)
      res = post(bad)
      P.failed(res, 429)
      assert.equal("1", res.headers["retry-after"])
      spec.clock.advance(1000)
      P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
    end)

    it("locks unknown Ids too (a 429 says nothing about existence) and stores no plain Id", function()
      spec.clock.freeze(1718445600000)
      local id = "no-such-id-" .. crypto.uuid4()
      for _ = 1, 5 do P.failed(post({ Id = id, Secret = "x", Entity = "app" }), 401) end
      P.failed(post({ Id = id, Secret = "x", Entity = "app" }), 429)
      local row = app.db.one("SELECT * FROM token_failures WHERE id_hash = ?", crypto.to_hex(crypto.sha256(id)))
      assert.equal(5, row.failures)
      assert.equal(1718445600000, row.window_start)
      assert.equal(0, P.count(app, "token_failures WHERE id_hash = ?", id))
    end)

    it("counts per Id and forgets the failures after a success", function()
      spec.clock.freeze(1718445600000)
      local c = P.customer(app)
      local other = P.customer(app)
      for _ = 1, 4 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      P.ok(post({ Id = other.id, Secret = other.secret, Entity = "customer" }))
      P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
      assert.equal(0, P.count(app, "token_failures WHERE id_hash = ?", crypto.to_hex(crypto.sha256(c.id))))
      for _ = 1, 4 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
    end)

    it("starts a new window once the old one is over", function()
      spec.clock.freeze(1718445600000)
      local c = P.customer(app)
      for _ = 1, 4 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      spec.clock.advance(300 * 1000)
      for _ = 1, 4 do P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401) end
      P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
    end)

    it("takes its numbers from token_max_failures and token_failure_window_seconds", function()
      local s = config.settings()
      s.token_max_failures, s.token_failure_window_seconds = "2", "60"
      spec.clock.freeze(1718445600000)
      local ok, err = pcall(function()
        local c = P.customer(app)
        P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401)
        P.failed(post({ Id = c.id, Secret = "x", Entity = "customer" }), 401)
        local res = post({ Id = c.id, Secret = c.secret, Entity = "customer" })
        P.failed(res, 429)
        assert.equal("60", res.headers["retry-after"])
        spec.clock.advance(60 * 1000)
        P.ok(post({ Id = c.id, Secret = c.secret, Entity = "customer" }))
      end)
      s.token_max_failures, s.token_failure_window_seconds = nil, nil
      assert.is_true(ok, err)
    end)
  end)
end)

-- Trimming was quadratic in a run of spaces, inside one C call the time budget cannot stop:
-- a 60k-space Id held a worker 18.7 s, a 15k-space Authorization header 1.4 s. Both are now
-- answered at once; the bounds below are far above the linear cost and far below the old one.
describe("whitespace-heavy credentials", function()
  local srv = spec.server { scripts = "scripts", schema = "schema" }

  local function send(head, body)
    local raw, how = srv.raw(head .. "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body, 5)
    return spec.parse_response(raw), how
  end

  it("answers an Id of 60k spaces around two letters in well under the budget", function()
    local id = "x" .. string.rep(" ", 60000) .. "y" .. string.rep(" ", 60000)
    local body = '{"Id":"' .. id .. '","Secret":"s","Entity":"customer"}'
    local res, how = send("POST " .. TOKEN .. " HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n", body)
    assert.equal("closed", how)
    assert.equal(401, res.status)
    assert.equal("invalid Id or Secret", res.json.Error)
  end)

  it("answers an Authorization header padded with 15k spaces within a second", function()
    local raw, how = srv.raw("GET /v2/integrations/customer HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer x" ..
      string.rep(" ", 15000) .. "y\r\nConnection: close\r\n\r\n", 1)
    assert.equal("closed", how)
    local res = spec.parse_response(raw)
    assert.equal(401, res.status)
  end)
end)
