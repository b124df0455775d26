-- wrk script for the soak: POST the prepared requests of a file in order, each connection waiting
-- args[2] ms before each request, so the run holds a rate instead of the most the server takes.
-- Each line: path <TAB> webhook-id <TAB> webhook-timestamp <TAB> webhook-signature <TAB> body
local reqs = {}
local pause = 0
local counter = -1  -- the first call checks the script (see requests.lua)

function init(args)
  for line in io.lines(args[1]) do
    local path, id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    reqs[#reqs + 1] = { path, id, ts, sig, body }
  end
  pause = tonumber(args[2])
end

function delay()
  return pause
end

function request()
  counter = counter + 1
  local r = reqs[((counter - 1) % #reqs) + 1]
  return wrk.format("POST", r[1], {
    ["content-type"] = "application/json",
    ["webhook-id"] = r[2],
    ["webhook-timestamp"] = r[3],
    ["webhook-signature"] = r[4],
  }, r[5])
end

local reported = false
function response(status, headers, body)
  if status >= 300 and not reported then
    reported = true
    io.write("FIRST-ERROR " .. status .. " " .. body .. "\n")
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
