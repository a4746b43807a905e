-- lib/peer.lua - the client's address, from req.peer.
--   peer.address(req.peer) -> "203.0.113.7" | "2001:db8::7"
-- req.peer is "ip:port", IPv6 as "[ip]:port" (the engine writes "?:0" when it cannot tell, and
-- port 0 for a client it read from X-Forwarded-For behind a proxy named by --real-ip-from).
-- The port goes; IPv6 hex digits are lowercased, and an IPv4 client seen on a dual-stack socket
-- ("[::ffff:192.0.2.7]:5") is the IPv4 address, so one client has one address either way.
local M = {}

function M.address(peer)
  local v6 = peer:match("^%[(.*)%]:%d*$")
  if v6 then
    local ip, zone = v6:match("^([^%%]*)(.*)$") -- a zone ("%eth0") keeps its case
    ip = ip:lower()
    return ip:match("^::ffff:(%d+%.%d+%.%d+%.%d+)$") or (ip .. zone)
  end
  return peer:match("^(.*):%d*$") or peer
end

return M
