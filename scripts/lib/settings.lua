-- lib/settings.lua - typed reads of engine.config settings. Environment variables arrive as
-- strings (APIENGINE_TOKEN_TTL_DAYS=30), config files may give numbers or tables; both work.
-- A malformed value is an operator error: it raises (the request answers 500 and the log
-- names the setting) rather than silently falling back.
local config = require "engine.config"
local json = require "engine.json"
local trim = require("lib.validate").trim

local M = {}

-- config.get(name) with the default given explicitly: `false` stands for "unset" (a missing
-- second argument is not safe to rely on across engine versions).
local function get(name)
  local v = config.get(name, false)
  if v == false or v == json.null then return nil end
  return v
end

-- A number setting, at least `min` (when given); `integer` demands a whole number.
function M.number(name, default, min, integer)
  local v = get(name)
  if v == nil then v = default end
  local n = tonumber(v)
  if n == nil or n ~= n or (min ~= nil and n < min) or (integer and n % 1 ~= 0) then
    error(string.format("setting %s: expected a number%s, got %q", name,
      min and (" >= " .. tostring(min)) or "", tostring(v)), 0)
  end
  if integer then n = math.tointeger(n) end
  return n
end

-- A string setting; nil (unset) and "" both come back as nil.
function M.string(name)
  local v = get(name)
  if v == nil then return nil end
  if type(v) ~= "string" then
    error(string.format("setting %s: expected a string, got %s", name, type(v)), 0)
  end
  if v == "" then return nil end
  return v
end

-- A table setting; an environment string is decoded as JSON (APIENGINE_PLANS='{"gold":{...}}').
function M.table(name)
  local v = get(name)
  if v == nil then return nil end
  if type(v) == "string" then
    local t, err = json.decode(v)
    if type(t) ~= "table" then
      error(string.format("setting %s: not a JSON object: %s", name, err or "wrong type"), 0)
    end
    return t
  end
  if type(v) ~= "table" then
    error(string.format("setting %s: expected a table, got %s", name, type(v)), 0)
  end
  return v
end

-- A list of strings: a Lua array in the config file, or from the environment a JSON array
-- ('["a","b"]') or a comma-separated string ("a, b"). Unset -> {}.
function M.list(name)
  local v = get(name)
  if v == nil then return {} end
  if type(v) == "string" then
    if v:match("^%s*%[") then
      local t, err = json.decode(v)
      if type(t) ~= "table" then
        error(string.format("setting %s: not a JSON array: %s", name, err or "wrong type"), 0)
      end
      v = t
    else
      local out = {}
      for item in v:gmatch("[^,]+") do
        item = trim(item)
        if item ~= "" then out[#out + 1] = item end
      end
      return out
    end
  end
  if type(v) ~= "table" then
    error(string.format("setting %s: expected a list, got %s", name, type(v)), 0)
  end
  for i, item in ipairs(v) do
    if type(item) ~= "string" then
      error(string.format("setting %s: item %d is not a string", name, i), 0)
    end
  end
  return v
end

return M
