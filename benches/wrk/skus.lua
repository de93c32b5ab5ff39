-- wrk script: request /inventory/{sku}?region=R for a sku mix drawn from the
-- Online Retail II trace. The paths file (one path per line, repeated in
-- proportion to demand) comes from benches/wrk/make_paths.py; set
-- SHARDCAST_PATHS to use another. The minimal script (no response
-- counting), as benches/peers uses it; benches/wrk/mix.lua replays the
-- generated mixes and counts statuses, x-cache and shards.
local paths = {}
local file = os.getenv("SHARDCAST_PATHS") or "benches/wrk/paths.txt"
for line in io.lines(file) do
  paths[#paths + 1] = line
end
if #paths == 0 then
  error("no paths in " .. file)
end
local i = 0
request = function()
  i = i + 1
  if i > #paths then i = 1 end
  return wrk.format("GET", paths[i])
end
