-- bench/usage/query.lua - wrk script: GET the usage path given on the command line with the
-- customer token in QUERY_TOKEN.
local token = os.getenv("QUERY_TOKEN") or error("set QUERY_TOKEN")
wrk.headers["Authorization"] = token
