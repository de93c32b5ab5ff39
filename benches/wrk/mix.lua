-- wrk script: replay a path mix from benches/wrk/make_paths.py and count
-- what came back.
--
--   wrk -t2 -c16 -d10s --latency -s benches/wrk/mix.lua \
--       http://127.0.0.1:8080 -- var/wrk/spike.txt
--
-- The paths file is the first script argument (after `--`), else
-- $SHARDCAST_PATHS, else var/wrk/popular.txt; relative to wrk's working
-- directory. Every thread cycles through the whole file from its own offset
-- (thread k starts at frac(k * 0.618) of the file, so any number of threads
-- start far apart). `-H` headers given to wrk are sent with every request.
--
-- Per thread it counts responses by status, by the node's `x-cache` header
-- (hit / miss / none) and by the proxy's `x-shardcast-shard` header (sent
-- when the proxy has `response_headers = true`, as conf/proxy-demo.toml
-- does). done() adds the threads up and prints one `key=value` line that
-- benches/wrk/run.py parses, then one line per thread.
-- SHARDCAST_COUNT=0 leaves response() undefined, so wrk skips header
-- parsing for Lua and the run costs what skus.lua costs; non-2xx then only
-- counts statuses >= 400 (wrk's own count).

-- Thread state ------------------------------------------------------------

local paths = {}
local n, i = 0, 0

-- Counters live in numbered globals (c1, c2, ...) and their names in the
-- `keys` string: done() reads them with thread:get, which copies scalars
-- between Lua states reliably (tables are not worth the risk there).
keys = ""
requests = 0
local slot = {}
local nslots = 0
local MAX_SLOTS = 96

local function bump(kind, key)
  local id = kind .. ":" .. key
  local g = slot[id]
  if g == nil then
    if nslots >= MAX_SLOTS then
      id = kind .. ":other"
      g = slot[id]
    end
    if g == nil then
      nslots = nslots + 1
      g = "c" .. nslots
      slot[id] = g
      _G[g] = 0
      keys = keys .. g .. "=" .. id .. "\n"
    end
  end
  _G[g] = _G[g] + 1
end

function init(args)
  local file = args[1] or os.getenv("SHARDCAST_PATHS") or "var/wrk/popular.txt"
  local f, err = io.open(file, "r")
  if f == nil then
    error("cannot read paths file " .. file .. ": " .. tostring(err) ..
          " (run benches/wrk/make_paths.py)")
  end
  for line in f:lines() do
    if line ~= "" then
      n = n + 1
      paths[n] = line
    end
  end
  f:close()
  if n == 0 then
    error("no paths in " .. file)
  end
  mix = (file:match("([^/]+)$") or file):gsub("%.txt$", "")
  local phase = ((tid or 0) * 0.6180339887498949) % 1
  i = math.floor(phase * n)
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format(nil, paths[i])
end

local function header(headers, name)
  local v = headers[name]
  if v ~= nil then return v end
  for k, val in pairs(headers) do
    if k:lower() == name then return val end
  end
  return nil
end

if os.getenv("SHARDCAST_COUNT") ~= "0" then
  function response(status, headers, body)
    requests = requests + 1
    bump("status", status)
    local xc = header(headers, "x-cache")
    bump("cache", xc and xc:lower() or "none")
    local shard = header(headers, "x-shardcast-shard")
    if shard then bump("shard", shard) end
  end
end

-- Main state ---------------------------------------------------------------

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("tid", #threads - 1)
end

local function ms(us) return us / 1000 end

local function counts_of(thread)
  local out = {}
  local ks = thread:get("keys") or ""
  for g, id in ks:gmatch("(c%d+)=([^\n]*)\n") do
    out[id] = (out[id] or 0) + (thread:get(g) or 0)
  end
  return out
end

local function sorted_kind(totals, kind, total, limit)
  local rows = {}
  for id, c in pairs(totals) do
    local k, key = id:match("^(%a+):(.*)$")
    if k == kind then rows[#rows + 1] = { key, c } end
  end
  table.sort(rows, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[1] < b[1]
  end)
  local parts = {}
  for j = 1, math.min(#rows, limit or #rows) do
    local key, c = rows[j][1], rows[j][2]
    if total then
      parts[#parts + 1] = string.format("%s:%.1f%%", key, 100 * c / total)
    else
      parts[#parts + 1] = key .. ":" .. c
    end
  end
  return table.concat(parts, ",")
end

function done(summary, latency, reqs)
  local totals = {}
  local per_thread = {}
  local counted = 0
  local name = "?"
  for k, t in ipairs(threads) do
    name = t:get("mix") or name
    local c = counts_of(t)
    per_thread[k] = c
    counted = counted + (t:get("requests") or 0)
    for id, v in pairs(c) do totals[id] = (totals[id] or 0) + v end
  end

  local secs = summary.duration / 1e6
  local e = summary.errors
  local non2xx
  if counted > 0 then
    non2xx = 0
    for id, v in pairs(totals) do
      local code = tonumber(id:match("^status:(%d+)$"))
      if code and (code < 200 or code > 299) then non2xx = non2xx + v end
    end
  else
    non2xx = e.status
  end
  local hit, miss = totals["cache:hit"] or 0, totals["cache:miss"] or 0
  local ratio = (hit + miss > 0) and string.format("%.3f", hit / (hit + miss)) or "-"

  io.write(string.format(
    "wrk-mix mix=%s requests=%d seconds=%.2f rps=%.1f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
    "non2xx=%d socket_errors=%d/%d/%d/%d hit=%d miss=%d none=%d hit_ratio=%s " ..
    "statuses=%s shards=%s\n",
    name, summary.requests, secs, summary.requests / secs,
    ms(latency:percentile(50)), ms(latency:percentile(99)), ms(latency.max),
    non2xx, e.connect, e.read, e.write, e.timeout,
    hit, miss, totals["cache:none"] or 0, ratio,
    sorted_kind(totals, "status") ~= "" and sorted_kind(totals, "status") or "-",
    counted > 0 and sorted_kind(totals, "shard", counted, 6) or "-"))
  if counted > 0 then
    for k, c in ipairs(per_thread) do
      io.write(string.format("  thread %d: responses=%d hit=%d miss=%d none=%d\n",
        k, threads[k]:get("requests") or 0, c["cache:hit"] or 0,
        c["cache:miss"] or 0, c["cache:none"] or 0))
    end
  end
end
