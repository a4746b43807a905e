-- lib/plans.lua - customer plans (API.md 1.4). Settings:
--   plans         table keyed by plan type: { standard = { max_apps = 5, max_users_per_app = 50 }, ... }
--                 (default: standard 5/50, enterprise 10/100); replaces the defaults when set
--   default_plan  the plan of a customer created without "Plan" (default "standard")
local settings = require "lib.settings"

local M = {}

local DEFAULTS = {
  standard = { max_apps = 5, max_users_per_app = 50 },
  enterprise = { max_apps = 10, max_users_per_app = 100 },
}

local function positive_int(v)
  local n = tonumber(v)
  return n ~= nil and n >= 0 and n % 1 == 0 and math.tointeger(n) or nil
end

-- The plans of a configuration table, checked: { type = { type=, max_apps=, max_users_per_app= } }.
local function plans_of(conf)
  local out = {}
  for name, p in pairs(conf) do
    if type(name) ~= "string" or type(p) ~= "table" then
      error("setting plans: every entry must be  name = { max_apps = N, max_users_per_app = N }", 0)
    end
    local apps, users = positive_int(p.max_apps), positive_int(p.max_users_per_app)
    if not apps or not users then
      error(string.format("setting plans: plan %s needs whole numbers max_apps and max_users_per_app", name), 0)
    end
    out[name] = { type = name, max_apps = apps, max_users_per_app = users }
  end
  return out
end

-- DEFAULTS never change, so their plans are checked and built once; callers get copies.
local DEFAULT_PLANS = plans_of(DEFAULTS)

local function copy(p)
  return { type = p.type, max_apps = p.max_apps, max_users_per_app = p.max_users_per_app }
end

-- The checked plans of the current configuration, shared (not to be changed or handed out).
local function current()
  local conf = settings.table("plans")
  if conf == nil then return DEFAULT_PLANS end
  return plans_of(conf)
end

-- All plans: { type = { type=, max_apps=, max_users_per_app= } } (a fresh table).
function M.all()
  local out = {}
  for name, p in pairs(current()) do out[name] = copy(p) end
  return out
end

function M.default_type()
  return settings.string("default_plan") or "standard"
end

-- The plan of that type, or nil when no such plan is configured.
function M.find(plan_type)
  if type(plan_type) ~= "string" then return nil end
  local p = current()[plan_type]
  return p and copy(p)
end

-- The plan a stored customer runs on: its own type, or the default plan's limits when the
-- operator has since removed that type from the configuration (the type is kept).
function M.of(customer)
  local p = M.find(customer.plan)
  if p then return p end
  local d = M.find(M.default_type())
  if not d then
    error("setting default_plan: no plan named " .. M.default_type(), 0)
  end
  return { type = customer.plan, max_apps = d.max_apps, max_users_per_app = d.max_users_per_app }
end

return M
