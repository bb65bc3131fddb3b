// The live page. Everything that comes from events (titles, comments, user names) is untrusted: it is only ever
// put into the page as text (textContent, createTextNode), never as HTML.
"use strict";

const FEED_MAX = 50;
const KEY_STORE = "streamrag-api-key";

// An API that requires keys answers 401: ask for one once, keep it for this tab, send it as a Bearer token (and as
// access_token on /stream, since EventSource cannot send headers).
function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

async function api(path, options = {}) {
  const call = () => fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), ...(apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {}) },
  });
  let response = await call();
  if (response.status === 401) {
    const key = window.prompt(apiKey() ? "That key was refused; another key:" : "This streamrag API needs a key:");
    if (key) {
      sessionStorage.setItem(KEY_STORE, key.trim());
      response = await call();
      if (response.status === 401) sessionStorage.removeItem(KEY_STORE);  // asked again at the next call
      else if (stream && stream.readyState === EventSource.CLOSED) connect();  // refused before: now with the key
    }
  }
  return response;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function link(href, text) {
  const a = el("a", text);
  // Only web links: a crafted "javascript:" URL must not become clickable.
  if (typeof href === "string" && /^https?:\/\//i.test(href)) {
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
  }
  return a;
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function secondsAgo(iso) {
  if (!iso) return "—";
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  return s < 60 ? `${s.toFixed(1)} s ago` : `${Math.round(s / 60)} min ago`;
}

function showFreshness(f) {
  if (f.error) {
    document.getElementById("f-feed").textContent = f.error;
    return;
  }
  document.getElementById("f-documents").textContent = f.documents;
  document.getElementById("f-last").textContent = secondsAgo(f.last_indexed_at);
  document.getElementById("f-lag").textContent = f.lag === null ? "unknown" : f.lag;
  // Every edit received before this time is searchable (the index's low watermark).
  const mark = f.watermark;
  document.getElementById("f-watermark").textContent = !mark || !mark.ingested_through
    ? "unknown"
    : `${new Date(mark.ingested_through).toISOString().slice(11, 19)} UTC` +
      (mark.lag_events ? ` (${mark.lag_events} waiting)` : " (all)");
  const p50 = f.ingested_to_searchable_p50_s, p95 = f.ingested_to_searchable_p95_s;
  document.getElementById("f-latency").textContent =
    p50 === null ? "no documents in the last 5 min" : `${p50.toFixed(2)} s / ${p95.toFixed(2)} s`;
}

function feedItem(doc) {
  const item = el("li", null, "event");
  item.dataset.docId = doc.doc_id;
  const head = el("div", null, "event-head");
  head.appendChild(link(doc.diff_url || doc.page_url, doc.title));
  head.appendChild(el("span", ` ${doc.wiki} · ${doc.type}${doc.bot ? " · bot" : ""}`, "meta"));
  item.appendChild(head);
  item.appendChild(el("div", doc.text, "event-text"));
  const lag = doc.ingested_at
    ? ((new Date(doc.indexed_at) - new Date(doc.ingested_at)) / 1000).toFixed(2) + " s ingested → searchable"
    : "";
  item.appendChild(el("div", `edited ${when(doc.event_time)} · ${lag}`, "meta"));
  return item;
}

function addToFeed(doc) {
  const feed = document.getElementById("feed");
  feed.insertBefore(feedItem(doc), feed.firstChild);
  while (feed.children.length > FEED_MAX) feed.removeChild(feed.lastChild);
}

async function loadRecent() {
  const response = await api("/events/recent?limit=20");
  if (!response.ok) return;
  const body = await response.json();
  body.events.slice().reverse().forEach(addToFeed);
}

let stream = null;  // the /stream EventSource

function connect() {
  const source = new EventSource(apiKey() ? `/stream?access_token=${encodeURIComponent(apiKey())}` : "/stream");
  stream = source;
  const state = document.getElementById("f-feed");
  source.onopen = () => { state.textContent = "live"; };
  source.onerror = () => { state.textContent = "reconnecting…"; };
  source.addEventListener("document", (e) => addToFeed(JSON.parse(e.data)));
  source.addEventListener("freshness", (e) => showFreshness(JSON.parse(e.data)));
}

function showAnswer(body) {
  document.getElementById("answer").hidden = false;
  const text = document.getElementById("answer-text");
  text.textContent = "";
  // The answer's [n] markers become links to the cited diff; the rest stays plain text.
  const byNumber = new Map(body.citations.map((c) => [c.n, c]));
  body.answer.split(/(\[\d+\])/).forEach((part) => {
    const match = /^\[(\d+)\]$/.exec(part);
    const citation = match && byNumber.get(Number(match[1]));
    if (citation) {
      const a = link(citation.diff_url || citation.page_url, part);
      a.className = "cite";
      text.appendChild(a);
    } else {
      text.appendChild(document.createTextNode(part));
    }
  });
  const meta = body.fallback ? `answered by: ${body.answerer} — ${body.fallback}` : `answered by: ${body.answerer}`;
  document.getElementById("answer-meta").textContent = meta;
  const list = document.getElementById("citations");
  list.textContent = "";
  body.citations.forEach((c) => {
    const item = el("li", null, "citation");
    item.value = c.n;
    item.appendChild(link(c.page_url, c.title));
    item.appendChild(el("span", " "));
    if (c.diff_url) item.appendChild(link(c.diff_url, "(diff)"));
    if (typeof c.similarity === "number") {
      item.appendChild(el("div", `why: similarity ${c.similarity.toFixed(2)} to the question`, "why"));
    }
    item.appendChild(el("div",
      `event ${c.lineage.event_id} · partition ${c.lineage.partition} offset ${c.lineage.offset} · ` +
      `edited ${when(c.event_time)} · indexed ${when(c.indexed_at)}`, "meta provenance"));
    list.appendChild(item);
  });
}

document.getElementById("question-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const query = document.getElementById("question").value;
  const status = document.getElementById("status");
  status.textContent = "thinking…";
  try {
    const response = await api("/answer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query }),
    });
    const body = await response.json();
    if (!response.ok) {
      status.textContent = body.message || `error ${response.status}`;
      return;
    }
    status.textContent = "";
    showAnswer(body);
  } catch (err) {
    status.textContent = `the service did not answer (${err})`;
  }
});

// --- search view ----------------------------------------------------------------------------------------------
function csv(id) {
  const values = document.getElementById(id).value.split(",").map((v) => v.trim()).filter(Boolean);
  return values.length ? values : null;
}

function searchBody() {
  const filters = {};
  const wiki = csv("search-wiki"), lang = csv("search-lang");
  if (wiki) filters.wiki = wiki;
  if (lang) filters.lang = lang;
  const namespace = document.getElementById("search-namespace").value;
  if (namespace !== "") filters.namespace = [Number(namespace)];
  const hours = document.getElementById("search-since").value;
  if (hours) filters.since = new Date(Date.now() - Number(hours) * 3600 * 1000).toISOString();
  if (document.getElementById("search-no-bots").checked) filters.exclude_bots = true;
  return {
    query: document.getElementById("search-query").value,
    mode: document.getElementById("search-mode").value,
    top_k: 20,
    filters,
  };
}

function resultItem(hit) {
  const item = el("li", null, "result");
  item.dataset.docId = hit.doc_id;
  item.appendChild(link(hit.page_url, hit.title));
  item.appendChild(el("span", " "));
  if (hit.diff_url) item.appendChild(link(hit.diff_url, "(diff)"));
  item.appendChild(el("div", hit.text, "event-text"));
  const why = typeof hit.similarity === "number" ? ` · similarity ${hit.similarity.toFixed(2)}` : "";
  item.appendChild(el("div", `score ${hit.score.toFixed(3)}${why} · ${hit.wiki} · ${hit.lang}` +
    ` · ns ${hit.namespace}${hit.bot ? " · bot" : ""} · edited ${when(hit.event_time)}`, "meta"));
  return item;
}

document.getElementById("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const status = document.getElementById("search-status");
  const results = document.getElementById("results");
  status.textContent = "searching…";
  try {
    const response = await api("/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(searchBody()),
    });
    const body = await response.json();
    if (!response.ok) {
      status.textContent = body.message || `error ${response.status}`;
      return;
    }
    results.textContent = "";
    body.hits.forEach((hit) => results.appendChild(resultItem(hit)));
    status.textContent = `${body.hits.length} result(s), ${body.mode}, ${body.took_ms.toFixed(0)} ms`;
  } catch (err) {
    status.textContent = `the service did not answer (${err})`;
  }
});

// Every control submits on a change: filters act at once.
document.querySelectorAll("#search-form select, #search-form input[type=checkbox]").forEach((control) => {
  control.addEventListener("change", () => {
    if (document.getElementById("search-query").value) document.getElementById("search-form").requestSubmit();
  });
});

// "/" puts the cursor in the search box (unless already typing somewhere).
document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (e.key === "/" && !typing) {
    e.preventDefault();
    document.getElementById("search-query").focus();
  }
});

// --- health ---------------------------------------------------------------------------------------------------
async function checkHealth() {
  const box = document.getElementById("health");
  const text = document.getElementById("health-text");
  try {
    const response = await fetch("/health");
    const body = await response.json();
    const down = Object.entries(body.dependencies || {}).filter(([, d]) => d.status !== "up").map(([n]) => n);
    box.dataset.state = down.length ? "degraded" : "up";
    text.textContent = down.length ? `degraded: ${down.join(", ")} down` : "all services up";
  } catch (err) {
    box.dataset.state = "down";
    text.textContent = "the API does not answer";
  }
}

checkHealth();
setInterval(checkHealth, 15000);
loadRecent().finally(connect);
