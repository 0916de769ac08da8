// The error-code table: for every code a client can receive ({"type": "error", "code"} or
// {"type": "status", "status": "ended", "code"}), the WebSocket close code a session ends
// with when that code ends it (null: the session goes on) and whether a client reconnects
// on its own. A copy of voicebridge.errors.CODES; tests/test_errors_table.py keeps the two
// equal and reads the JSON between the BEGIN/END markers, so keep it plain JSON.

// BEGIN CODES
const TABLE = {
  "bad_json": { "close": null, "retry": false },
  "bad_message": { "close": null, "retry": false },
  "unknown_type": { "close": null, "retry": false },
  "bad_audio": { "close": null, "retry": false },
  "odd_frame": { "close": null, "retry": false },
  "upstream_error": { "close": null, "retry": false },
  "rate_limited": { "close": 1008, "retry": false },
  "frame_too_large": { "close": 1009, "retry": false },
  "unauthorized": { "close": 1008, "retry": false },
  "forbidden_origin": { "close": 1008, "retry": false },
  "not_found": { "close": null, "retry": false },
  "host_not_allowed": { "close": null, "retry": false },
  "response_interrupted": { "close": null, "retry": false },
  "response_failed": { "close": null, "retry": false },
  "response_incomplete": { "close": null, "retry": false },
  "transcription_failed": { "close": null, "retry": false },
  "upstream_config_rejected": { "close": 1011, "retry": false },
  "agent_ended": { "close": 1000, "retry": false },
  "calls_unavailable": { "close": null, "retry": true },
  "phone_off": { "close": null, "retry": false },
  "upstream_auth_rejected": { "close": 1011, "retry": false },
  "server_misconfigured": { "close": 1011, "retry": false },
  "bad_query": { "close": null, "retry": false },
  "slow_consumer": { "close": 1013, "retry": true },
  "at_capacity": { "close": 1013, "retry": true },
  "upstream_connect_failed": { "close": 1011, "retry": true },
  "upstream_closed": { "close": 1011, "retry": true },
  "internal_error": { "close": 1011, "retry": true },
  "server_shutdown": { "close": 1001, "retry": true },
  "session_time_limit": { "close": 1000, "retry": false },
  "idle_timeout": { "close": 1000, "retry": false },
  "ended_by_admin": { "close": 1000, "retry": false }
};
// END CODES

/** code -> {close, retry}, frozen. */
export const CODES = Object.freeze(
  Object.fromEntries(Object.entries(TABLE).map(([code, info]) => [code, Object.freeze(info)])),
);

/** The table's entry for `code`, or undefined (also for "constructor" and the like). */
export function codeInfo(code) {
  return typeof code === 'string' && Object.hasOwn(CODES, code) ? CODES[code] : undefined;
}

// By close code alone: 1008 (policy) and 1009 (too large) would fail the same way again and
// 1000 is a deliberate end; 1001 (restarting), 1006 (dropped), 1011 (upstream failure),
// 1013 (busy, or a network too slow) and anything else are worth another try.
const FINAL_CLOSE_CODES = new Set([1000, 1008, 1009]);

/**
 * Should the client reconnect after the server closed an open socket with `closeCode`?
 *
 * `ended` is the code of a `status: ended` message on that socket, `error` the code of
 * its last `error` message (each null when there was none). An ended code the table
 * knows decides: the server said this is how the session ends. An error code decides
 * only when the table says it ends a session with this very close code, because the
 * same code can be sent without ending anything (`rate_limited` for one typed message
 * too many) and a socket dropped later for another reason must not inherit it.
 * Otherwise the close code decides.
 */
export function shouldReconnect(closeCode, { ended = null, error = null } = {}) {
  const end = codeInfo(ended);
  if (end && end.close !== null) return end.retry;
  const err = codeInfo(error);
  if (err && err.close === closeCode) return err.retry;
  return !FINAL_CLOSE_CODES.has(closeCode);
}
