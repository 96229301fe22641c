// The library page: plain JavaScript over the server's /api (server/web.py); no framework.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;  // the video in the player: {id, name, duration}
const polling = new Set();

function clock(s) {
  s = Math.floor(s || 0);
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = String(s % 60).padStart(2, "0");
  return (h ? h + ":" + String(m).padStart(2, "0") : String(m).padStart(2, "0")) + ":" + sec;
}

function el(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props || {});
  children.forEach((c) => node.append(c));
  return node;
}

async function api(path, body) {
  const init = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify(body)};
  const r = await fetch(path, init);
  if (r.status === 401) { $("login").hidden = false; throw new Error("this server needs its API key"); }
  if (!r.ok) {
    let message = r.statusText;
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return r;
}

// ----- the library -------------------------------------------------------------------------
async function loadLibrary() {
  const data = await (await api("/api/library")).json();
  $("where").textContent = data.library ? `${data.library} · ${data.model}` : `${data.model} · no --library`;
  const list = $("videos");
  list.replaceChildren(...data.videos.map(videoCard));
  if (!data.videos.length) list.append(el("p", {className: "status", textContent: "No video yet: add a folder below."}));
  data.jobs.filter((j) => j.state === "queued" || j.state === "running").forEach((j) => watchJob(j.id));
  data.jobs.filter((j) => !polling.has(j.id)).forEach(showJob);
}

function videoCard(v) {
  const card = el("li", {className: "video", title: v.reason || v.name});
  card.dataset.id = v.id;
  card.append(el("img", {src: `/api/videos/${v.id}/frame?t=${Math.min(1, (v.duration || 0) / 2)}`, alt: "", loading: "lazy"}),
              el("div", {className: "name", textContent: v.name}),
              el("div", {className: "meta " + v.status, textContent: `${v.duration ? clock(v.duration) : "-"} · ${v.status === "done" ? "indexed" : v.status}`}));
  if (v.status === "done") card.onclick = () => openVideo(v, 0);
  return card;
}

// ----- indexing ----------------------------------------------------------------------------
$("index").onsubmit = async (event) => {
  event.preventDefault();
  try {
    const {job} = await (await api("/api/index", {folder: $("folder").value})).json();
    watchJob(job);
  } catch (e) { $("jobs").prepend(el("p", {className: "status failed", textContent: e.message})); }
};

function showJob(job) {
  let box = document.querySelector(`.job[data-id="${job.id}"]`);
  if (!box) { box = el("div", {className: "job"}); box.dataset.id = job.id; $("jobs").prepend(box); }
  const head = job.state === "running" ? `indexing ${job.folder}: video ${job.position} of ${job.videos} (${job.current})`
    : job.state === "failed" ? `indexing ${job.folder} failed: ${job.error}` : `${job.folder}: ${job.state}`;
  box.dataset.state = job.state;
  box.replaceChildren(el("div", {className: "status " + job.state, textContent: head}));
  if (job.state === "running") {
    box.append(el("progress", {max: job.frames_total || 1, value: job.frames_total ? job.frames : 0}));
  }
  if (job.lines.length) box.append(el("pre", {textContent: job.lines.join("\n")}));
}

async function watchJob(id) {
  if (polling.has(id)) return;
  polling.add(id);
  for (;;) {
    const job = await (await api(`/api/jobs/${id}`)).json();
    showJob(job);
    if (job.state === "done" || job.state === "failed") break;
    await new Promise((r) => setTimeout(r, 400));
  }
  polling.delete(id);
  loadLibrary();
}

// ----- asking across the library ---------------------------------------------------------------
$("ask").onsubmit = async (event) => {
  event.preventDefault();
  $("ask-status").textContent = "asking every video…";
  $("hits").replaceChildren();
  try {
    const {hits, errors} = await (await api("/api/ask", {question: $("question").value, top: 5})).json();
    $("ask-status").textContent = (hits.length ? `${hits.length} moments, best first` : "no indexed video answered") +
      errors.map((e) => `; ${e.name} could not answer: ${e.error}`).join("");
    $("hits").replaceChildren(...hits.map(hitCard));
  } catch (e) { $("ask-status").textContent = e.message; }
};

function hitCard(h) {
  const card = el("li", {className: "hit"});
  card.dataset.id = h.id;
  card.dataset.seconds = h.seconds;
  card.append(el("img", {src: `/api/videos/${h.id}/frame?t=${h.seconds}`, alt: ""}),
              el("div", {className: "name", textContent: `${h.rank}. ${h.name}`}),
              el("div", {className: "meta", textContent: `at ${clock(h.seconds)} · score ${h.score.toFixed(2)}`}),
              el("div", {className: "answer", textContent: h.answer}));
  card.onclick = () => openVideo({id: h.id, name: h.name}, h.seconds);
  return card;
}

// ----- one video: the player, chat, evidence markers, memory map ---------------------------------
function openVideo(v, seconds) {
  current = v;
  $("player-panel").hidden = false;
  $("player-title").textContent = v.name;
  $("player-note").textContent = "";
  $("chat-log").replaceChildren();
  $("timeline").replaceChildren();
  $("memory-map").hidden = true;
  const player = $("player");
  player.dataset.seek = seconds;
  player.onloadedmetadata = () => { player.currentTime = seconds; player.play().catch(() => {}); };
  player.onerror = () => {
    $("player-note").textContent = "This browser cannot play this file's codec; its answers still work. " +
      "Re-encode it as H.264 MP4 or WebM to watch it here.";
  };
  player.src = `/api/videos/${v.id}/file`;
  $("player-panel").scrollIntoView({behavior: "smooth"});
}

function addMarkers(moments) {
  const player = $("player"), length = player.duration || current.duration;
  if (!length) return;
  for (const m of moments) {
    const mark = el("button", {className: "marker", type: "button", title: `${m.clock} (${Math.round(m.share * 100)}%)`});
    mark.style.left = `${Math.min(100, (100 * m.seconds) / length)}%`;
    mark.onclick = () => { player.currentTime = m.seconds; };
    $("timeline").append(mark);
  }
}

$("chat").onsubmit = async (event) => {
  event.preventDefault();
  const question = $("chat-question").value, answer = el("p", {className: "a"});
  $("chat-log").append(el("p", {className: "q", textContent: question}), answer);
  $("chat-question").value = "";
  try {
    const reply = await api(`/api/videos/${current.id}/chat`, {question});
    const reader = reply.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const line of events) {
        const event = JSON.parse(line.replace(/^data: /, ""));
        if (event.piece) answer.textContent += event.piece;
        if (event.error) answer.textContent += ` (${event.error})`;
        if (event.done) {
          const moments = event.done.evidence || [];
          answer.append(el("span", {className: "meta", textContent: moments.length ?
            "  evidence: " + moments.map((m) => `${m.clock} (${Math.round(m.share * 100)}%)`).join(", ") : ""}));
          addMarkers(moments);
        }
      }
    }
  } catch (e) { answer.textContent = e.message; }
};

$("map-button").onclick = async () => {
  try {
    const blob = await (await api(`/api/videos/${current.id}/memory-map`, {})).blob();
    $("memory-map").src = URL.createObjectURL(blob);
    $("memory-map").hidden = false;
  } catch (e) { $("player-note").textContent = e.message; }
};

// ----- the key -----------------------------------------------------------------------------------
$("login").onsubmit = async (event) => {
  event.preventDefault();
  try { await api("/api/login", {key: $("key").value}); $("login").hidden = true; loadLibrary(); }
  catch (e) { $("key").value = ""; }
};

loadLibrary().catch((e) => { $("where").textContent = e.message; });
