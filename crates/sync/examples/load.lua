-- The load generator of the queue benchmark: `load.rs` runs it through wrk as
--   wrk -t THREADS -c CONNECTIONS -d LIMIT -s load.lua URL -- FILE THREADS MODE
-- FILE has one request a line: `METHOD PATH TOKEN [BODY]`. Each thread takes every
-- THREADS-th line.
--
-- MODE `cycle` sends the lines round and round until wrk's time is up.
--
-- MODE `once` (approvals) sends each line until its answer is in, and each thread writes
-- `started`, then `finished` once every one of its lines is answered, on standard error:
-- load.rs times the run by them and ends wrk, whose own duration is always its -d. An
-- answer is a request's view, whose first `"id"` names the request. wrk asks for a
-- request again when its first write on a new TLS connection must be retried, and drops the
-- one it had; so once every line has been handed out, the lines not answered yet are handed
-- out again, in turn (a second identical approval answers as the first did). Any answer but
-- 200 is written as `failed …`, and load.rs stops.

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

local mode
local requests, ids, index = {}, {}, {}
local answered, pending = {}, 0
local handed, again = 0, 0
local spare

function init(args)
  local file, count = args[1], tonumber(args[2])
  mode = args[3]
  local n = 0
  for line in io.lines(file) do
    if n % count == id - 1 then
      local method, path, token, body = line:match("^(%S+) (%S+) (%S+) ?(.*)$")
      local headers = { ["Authorization"] = "Bearer " .. token }
      if body == "" then
        body = nil
      else
        headers["Content-Type"] = "application/json"
      end
      requests[#requests + 1] = wrk.format(method, path, headers, body)
      local request_id = path:match("^/v1/requests/([^/]+)/")
      if request_id then
        ids[#requests] = request_id
        index[request_id] = #requests
      end
    end
    n = n + 1
  end
  pending = #requests
  spare = wrk.format("GET", "/v1/health")
end

function request()
  if mode == "cycle" then
    handed = handed + 1
    return requests[(handed - 1) % #requests + 1]
  end
  if handed == 0 then
    io.stderr:write("started\n")
  end
  if handed < #requests then
    handed = handed + 1
    return requests[handed]
  end
  -- Every line handed out: the next one still unanswered, in turn.
  for _ = 1, #requests do
    again = again % #requests + 1
    if not answered[again] then
      return requests[again]
    end
  end
  return spare
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("failed " .. status .. ": " .. body:sub(1, 300):gsub("\n", " ") .. "\n")
    return
  end
  if mode ~= "once" then
    return
  end
  local n = index[body:match('"id":"([^"]+)"') or ""]
  if n and not answered[n] then
    answered[n] = true
    pending = pending - 1
    if pending == 0 then
      io.stderr:write("finished\n")
      wrk.thread:stop()
    end
  end
end

function done(summary, latency)
  local e = summary.errors
  io.write(string.format("wrk-result duration_us=%d requests=%d errors=%d p99_us=%d\n",
    summary.duration, summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(99.0)))
end
