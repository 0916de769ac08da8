// The call records page: searches GET /calls, opens GET /calls/{id}, downloads
// GET /calls/{id}/transcript. Every value from the server is set as text, never as HTML.

const PAGE = 25;
const TOKEN_KEY = "voicebridge.adminToken";

const $ = (id) => document.getElementById(id);
const state = { offset: 0, total: 0, nextOffset: null, selected: null, filters: {} };

// -- talking to the server --------------------------------------------------------------

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function request(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body.message || body.error || message;
  } catch {
    // not JSON: keep the status line
  }
  const error = new Error(message);
  error.status = response.status;
  throw error;
}

function showStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function failed(error) {
  if (error.status === 401) {
    showStatus("An admin token is needed: enter it above and press Use.", true);
    $("token").focus();
  } else {
    showStatus(`Could not load call records: ${error.message}`, true);
  }
}

// -- formatting -----------------------------------------------------------------------

function when(iso) {
  const date = new Date(iso);
  return date.toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

function clock(seconds) {
  const s = Math.max(0, seconds);
  const minutes = Math.floor(s / 60);
  const rest = (s - minutes * 60).toFixed(1).padStart(4, "0");
  return `${String(minutes).padStart(2, "0")}:${rest}`;
}

function money(value) {
  if (value === null || value === undefined) return "—";
  return value < 0.01 ? `$${value.toFixed(4)}` : `$${value.toFixed(2)}`;
}

function ms(value) {
  return value === null || value === undefined ? "—" : `${Math.round(value)} ms`;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

// -- the list ---------------------------------------------------------------------------

function filtersFromForm() {
  const filters = {};
  for (const name of ["from", "to"]) {
    const value = $(name).value;
    if (value) filters[name] = new Date(value).toISOString();
  }
  for (const name of ["channel", "reason", "q"]) {
    const value = $(name).value.trim();
    if (value) filters[name] = value;
  }
  return filters;
}

async function search(offset = 0) {
  const params = new URLSearchParams({ ...state.filters, limit: String(PAGE), offset: String(offset) });
  showStatus("Loading…");
  let page;
  try {
    page = await (await request(`/calls?${params}`)).json();
  } catch (error) {
    failed(error);
    return;
  }
  state.offset = page.offset;
  state.total = page.total;
  state.nextOffset = page.next_offset;
  renderList(page.calls);
  const shown = page.count ? `${page.offset + 1}–${page.offset + page.count} of ${page.total}` : "";
  $("page-info").textContent = shown;
  $("newer").disabled = page.offset === 0;
  $("older").disabled = page.next_offset === null;
  showStatus(page.total ? `${page.total} call${page.total === 1 ? "" : "s"} found.` : "No calls match.");
}

function renderList(calls) {
  const body = $("calls").querySelector("tbody");
  body.replaceChildren();
  for (const call of calls) {
    const row = document.createElement("tr");
    row.dataset.callId = call.call_id;
    row.setAttribute("aria-selected", String(call.call_id === state.selected));
    const first = cell(row, "");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = when(call.started_at);
    open.setAttribute("aria-label", `Open the call of ${when(call.started_at)}`);
    first.append(open);
    cell(row, clock(call.duration_s));
    cell(row, call.channel);
    cell(row, call.end_reason);
    cell(row, String(call.turn_count), "num");
    cell(row, String(call.barge_ins), "num");
    cell(row, ms(call.latency.p50_ms), "num");
    cell(row, money(call.cost_usd), "num");
    cell(row, call.preview, "preview");
    row.addEventListener("click", () => openCall(call.call_id));
    body.append(row);
  }
}

// -- one call ---------------------------------------------------------------------------

function fact(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function turnItem(call, turn) {
  const item = document.createElement("li");
  const meta = document.createElement("div");
  meta.className = "turn-meta";
  const who = document.createElement("span");
  who.className = "who";
  const at = document.createElement("span");
  at.textContent = clock((new Date(turn.at) - new Date(call.started_at)) / 1000);
  meta.append(who, at);
  const text = document.createElement("p");
  item.dataset.kind = turn.kind;
  if (turn.kind === "user" || turn.kind === "user_text") {
    item.className = "turn caller";
    who.textContent = turn.kind === "user" ? "Caller" : "Caller (typed)";
    text.textContent = turn.text;
  } else if (turn.kind === "agent") {
    item.className = "turn agent";
    who.textContent = "Agent";
    if (turn.latency_ms !== null) {
      const latency = document.createElement("span");
      latency.textContent = `answered in ${ms(turn.latency_ms)}`;
      meta.append(latency);
    }
    if (turn.output_tokens !== null) {
      const tokens = document.createElement("span");
      tokens.textContent = `${turn.input_tokens} in / ${turn.output_tokens} out tokens`;
      meta.append(tokens);
    }
    text.textContent = turn.text;
    if (turn.interrupted) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = `interrupted · ${Math.round((turn.heard_share || 0) * 100)}% heard`;
      meta.append(badge);
      if (turn.unheard) {
        const unheard = document.createElement("span");
        unheard.className = "unheard";
        unheard.title = "not heard by the caller";
        unheard.textContent = `${turn.text ? " " : ""}${turn.unheard}`;
        text.append(unheard);
      }
    }
  } else {
    item.className = "turn event";
    const took = turn.duration_ms === null ? "" : ` in ${ms(turn.duration_ms)}`;
    if (turn.kind === "tool") {
      who.textContent = `Tool ${turn.name}`;
      text.textContent = `${turn.outcome}${took}`;
    } else {
      who.textContent = "Voice Live reconnect";
      text.textContent = `${turn.name}: ${turn.outcome}${took}`;
    }
  }
  item.append(meta, text);
  return item;
}

async function openCall(callId) {
  let call;
  try {
    call = await (await request(`/calls/${encodeURIComponent(callId)}`)).json();
  } catch (error) {
    failed(error);
    return;
  }
  state.selected = callId;
  for (const row of $("calls").querySelectorAll("tbody tr")) {
    row.setAttribute("aria-selected", String(row.dataset.callId === callId));
  }
  $("detail-title").textContent = `Call of ${when(call.started_at)}`;
  const facts = $("facts");
  facts.replaceChildren();
  const u = call.usage;
  fact(facts, "Call id", call.call_id);
  fact(facts, "Channel", `${call.channel} · ${call.instance}`);
  fact(facts, "Client", call.client || "—");
  fact(facts, "Length", clock(call.duration_s));
  fact(facts, "Ended", `${call.end_reason}${call.close_code ? ` (${call.close_code})` : ""}`);
  fact(facts, "Latency", call.latency.count
    ? `p50 ${ms(call.latency.p50_ms)} · p95 ${ms(call.latency.p95_ms)} · max ${ms(call.latency.max_ms)}`
    : "—");
  fact(facts, "Barge-ins", String(call.barge_ins));
  fact(facts, "Reconnects", String(call.reconnects));
  fact(facts, "Tokens", `${u.input_tokens} in (audio ${u.input_audio}, text ${u.input_text}, cached ${u.cached}) · ${u.output_tokens} out (audio ${u.output_audio}, text ${u.output_text})`);
  fact(facts, "Estimated cost", money(call.cost_usd));
  for (const [key, value] of Object.entries(call.metadata)) fact(facts, key, value);
  $("turns").replaceChildren(...call.turns.map((turn) => turnItem(call, turn)));
  if (call.dropped_turns) {
    const more = document.createElement("li");
    more.className = "turn event";
    more.textContent = `${call.dropped_turns} more turns were not kept.`;
    $("turns").append(more);
  }
  $("detail").hidden = false;
  document.querySelector(".panes").classList.add("open");
  $("detail-title").focus?.();
}

async function download() {
  if (!state.selected) return;
  let blob;
  try {
    blob = await (await request(`/calls/${encodeURIComponent(state.selected)}/transcript`)).blob();
  } catch (error) {
    failed(error);
    return;
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `call-${state.selected}.txt`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// -- wiring -----------------------------------------------------------------------------

function start() {
  $("detail-title").tabIndex = -1;
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    search(0);
  });
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.filters = filtersFromForm();
    search(0);
  });
  $("filters").addEventListener("reset", () => {
    state.filters = {};
    setTimeout(() => search(0));
  });
  $("newer").addEventListener("click", () => search(Math.max(0, state.offset - PAGE)));
  $("older").addEventListener("click", () => state.nextOffset !== null && search(state.nextOffset));
  $("download").addEventListener("click", download);
  $("close-detail").addEventListener("click", () => {
    $("detail").hidden = true;
    state.selected = null;
    document.querySelector(".panes").classList.remove("open");
  });
  search(0);
}

window.voicebridgeCalls = state;
start();
