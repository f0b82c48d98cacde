-- wrk script of bench/ingest.py (run with -t 1): sends each request of a file once.
-- Arguments: the file, then the time limit in seconds. The file holds records
-- "<byte count>\n<raw HTTP request>", written by ingest.py with fresh signatures.
-- When the file is used up or the time limit passes, request() returns "" (wrk then
-- writes nothing and the connection idles) and the thread stops as soon as every request
-- sent has its answer, so no answer is lost and the status counts are exact. It prints
-- "thread-done" at that moment; ingest.py then ends wrk with SIGINT, so wrk's duration is
-- the real one and not its -d cap. The last line is "RESULT {json}".

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  requests = {}
  local pos = 1
  while pos <= #data do
    local newline = data:find("\n", pos, true)
    local size = tonumber(data:sub(pos, newline - 1))
    requests[#requests + 1] = data:sub(newline + 1, newline + size)
    pos = newline + 1 + size
  end
  -- Before connecting, wrk calls request() once to check that it parses; that call gets
  -- this copy of the first request, which is never sent, hence issued starts at -1.
  table.insert(requests, 1, requests[1])
  issued, answered, cursor, statuses, stopped = -1, 0, 1, {}, false
  deadline = os.time() + tonumber(args[2])
end

local function stop_when_drained()
  if issued == answered and not stopped then
    stopped = true
    io.write("thread-done\n")
    io.flush()
    wrk.thread:stop()
  end
end

function request()
  if cursor <= #requests and os.time() < deadline then
    cursor, issued = cursor + 1, issued + 1
    return requests[cursor - 1]
  end
  stop_when_drained()
  return ""
end

function response(status)
  answered = answered + 1
  statuses[status] = (statuses[status] or 0) + 1
  if cursor > #requests or os.time() >= deadline then
    stop_when_drained()
  end
end

function done(summary, latency)
  local thread = threads[1]
  local counts = {}
  for status, count in pairs(thread:get("statuses")) do
    counts[#counts + 1] = string.format('"%d": %d', status, count)
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"duration_us": %d, "sent": %d, "answered": %d, "p50_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, '
      .. '"timeout": %d}}\n',
    summary.duration, thread:get("issued"), thread:get("answered"), latency:percentile(50),
    latency:percentile(99), latency.max, table.concat(counts, ", "), e.connect, e.read,
    e.write, e.timeout))
end
