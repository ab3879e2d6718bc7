// The densepref annotation page: two synchronized videos, a segment timeline, A / B / tie answers
// saved as they are given. A plain ES module, no build step. Server API: see labeler/annotate.py.
import { api, download } from "./annotate_api.js";
import { SyncedPlayer } from "./synced_player.js";

const $ = (sel) => document.querySelector(sel);
const ANNOTATOR_KEY = "densepref_annotator";
// Same rule as the server (labeler.annotation_store.ANNOTATOR_PATTERN); the server has the last word.
const ANNOTATOR_RE = /^[\p{L}\p{N}_][\p{L}\p{N}_.@-]{0,63}$/u;
const SWAP = { A: "B", B: "A", tie: "tie" };

const AUTO_ADVANCE_KEY = "densepref_auto_advance";
const params = new URLSearchParams(location.search);
const truthy = (name) => ["1", "true", "yes"].includes((params.get(name) || "").toLowerCase());
// The review queue (labeler/service/annotate/queue.py): a judge's label file orders the pairs and,
// only when asked, shows its labels.
const QUEUE_PARAMS = ["labels", "order", "preannotations", "team", "overlap"];
const state = {
  manifest: params.get("manifest") || "",
  blind: truthy("blind"),
  labels: params.get("labels") || "",
  preannotations: truthy("preannotations"),
  annotator: "",
  data: null, // the /annotate/api/pairs answer
  pairIdx: 0,
  segIdx: 0,
  answers: [], // per pair: {segment index: {label (true A/B), note}}
  drafts: [], // per pair: {segment index: note typed before answering}
  pending: 0,
  saveChain: Promise.resolve(),
  loads: 0,
};


// ------------------------------------------------------------------ messages

let messageTimer = null;
function say(text, isError = false, sticky = false) {
  const box = $("#message");
  box.textContent = text;
  box.classList.toggle("error", isError);
  box.hidden = false;
  clearTimeout(messageTimer);
  if (!sticky) messageTimer = setTimeout(() => { box.hidden = true; }, isError ? 8000 : 3500);
}

function setSaveStatus(kind, text) {
  const el = $("#save-status");
  el.dataset.state = kind;
  el.dataset.pending = String(state.pending);
  el.textContent = text;
  el.title = text;
}

// ------------------------------------------------------------------ data helpers

const pair = () => state.data && state.data.pairs[state.pairIdx];
const segment = () => pair() && pair().segments[state.segIdx];
const shown = (trueLabel, p) => (p.swapped ? SWAP[trueLabel] : trueLabel); // true A/B -> screen side
const truth = (shownLabel, p) => (p.swapped ? SWAP[shownLabel] : shownLabel); // screen side -> true A/B

function pairDone(i) {
  const p = state.data.pairs[i];
  return p.segments.every((s) => state.answers[i][s.index]);
}

function updateProgress() {
  const total = state.data ? state.data.pairs.length : 0;
  let done = 0;
  for (let i = 0; i < total; i++) if (pairDone(i)) done++;
  $("#progress").textContent = `${done} / ${total} pairs done`;
  $("#progress").dataset.done = String(done);
  $("#progress").dataset.total = String(total);
}

// First pair with an unanswered segment, at its first unanswered segment.
function resumePosition() {
  const pairs = state.data.pairs;
  for (let i = 0; i < pairs.length; i++) {
    const seg = pairs[i].segments.find((s) => !state.answers[i][s.index]);
    if (seg) return [i, seg.index];
  }
  return [0, 0];
}

// ------------------------------------------------------------------ videos

const player = new SyncedPlayer($("#video-left"), $("#video-right"), {
  onTime: followPlayhead,
  onPlayState: (playing) => {
    $("#play-btn").textContent = playing ? "‖ Pause" : "▶ Play";
    const ref = $("#video-ref");
    if ($("#ref-figure").hidden) return;
    if (playing) ref.play().catch(() => {}); else { ref.pause(); ref.currentTime = player.lead.currentTime; }
  },
  onError: (video, message) => { errorBox(video).textContent = message; errorBox(video).hidden = false; },
  onLoaded: (video) => { errorBox(video).hidden = true; },
});
const errorBox = (video) => (video === player.lead ? $("#error-left") : $("#error-right"));

function segmentAt(frame) {
  const segs = pair().segments;
  return segs.find((s) => frame >= s.start_frame && frame < s.end_frame) || segs[segs.length - 1];
}

// Every playhead move: loop inside the current segment while playing (when asked), else let the
// current segment follow the playhead; draw the playhead and the time.
function followPlayhead(t) {
  if (!pair()) return;
  const seg = segment();
  if (player.playing && $("#loop").checked && t >= seg.end_frame / player.fps) {
    player.seekFrame(seg.start_frame);
    return;
  }
  const ref = $("#video-ref");
  // The reference follows the pair's clock: pulled back onto it when it drifts by over a frame.
  if (!$("#ref-figure").hidden && Math.abs(ref.currentTime - t) > 1 / player.fps) ref.currentTime = t;
  const at = segmentAt(player.frameAt(t));
  if (at.index !== state.segIdx) selectSegment(at.index, false);
  const frac = Math.max(0, Math.min(1, t / player.duration));
  $("#playhead").style.left = `calc(${(frac * 100).toFixed(3)}% - 1px)`;
  $("#time").textContent = `${t.toFixed(3)} s · frame ${player.frameAt(t)} / ${player.numFrames - 1}`;
}

function togglePlay() {
  if (!pair()) return;
  const seg = segment();
  // Looping, at the segment's last frame: start the segment over rather than leave it.
  if (!player.playing && $("#loop").checked && player.frameAt() >= seg.end_frame - 1) player.seekFrame(seg.start_frame);
  player.toggle();
}

function stepFrame(delta) { if (pair()) player.step(delta); }

// ------------------------------------------------------------------ rendering

function renderTimeline() {
  const p = pair();
  const box = $("#segments");
  box.replaceChildren();
  for (const s of p.segments) {
    const el = document.createElement("div");
    el.className = "seg";
    el.id = `seg-${s.index}`;
    el.dataset.index = String(s.index);
    el.style.left = `${(100 * s.start_frame) / p.num_frames}%`;
    el.style.width = `${(100 * (s.end_frame - s.start_frame)) / p.num_frames}%`;
    el.title = `segment ${s.index + 1}: ${s.start_s.toFixed(2)}–${s.end_s.toFixed(2)} s`;
    box.appendChild(el);
  }
  renderSegments();
}

function renderSegments() {
  const p = pair();
  const answers = state.answers[state.pairIdx];
  for (const s of p.segments) {
    const el = $(`#seg-${s.index}`);
    const a = answers[s.index];
    const label = a ? shown(a.label, p) : null;
    el.className = "seg" + (label ? ` answer-${label}` : "") + (s.index === state.segIdx ? " current" : "");
    el.dataset.label = label || "";
    el.textContent = `${s.index + 1}${label ? " · " + label : ""}`;
  }
  const seg = segment();
  const a = answers[state.segIdx];
  const answered = p.segments.filter((s) => answers[s.index]).length;
  $("#segment-info").textContent =
    `Segment ${state.segIdx + 1} / ${p.segments.length} · ${seg.start_s.toFixed(2)}–${seg.end_s.toFixed(2)} s ` +
    `(${answered} answered)`;
  for (const lab of ["A", "B", "tie"]) {
    $(`#answer-${lab}`).setAttribute("aria-pressed", String(!!a && shown(a.label, p) === lab));
  }
  renderJudgeHint(p, seg);
  const note = a && a.note != null ? a.note : (state.drafts[state.pairIdx][state.segIdx] || "");
  if (document.activeElement !== $("#note")) $("#note").value = note;
  $("#prev-pair").disabled = state.pairIdx === 0;
  $("#next-pair").disabled = state.pairIdx >= state.data.pairs.length - 1;
  updateProgress();
}

// The judge's label of the current segment, on the screen's sides (only when asked for).
function renderJudgeHint(p, seg) {
  const hint = $("#judge-hint");
  const pre = p.preannotation && p.preannotation.segments[String(seg.index)];
  hint.hidden = !pre;
  if (!pre) { hint.textContent = ""; hint.dataset.label = ""; return; }
  const label = shown(pre.label, p);
  const prob = { A: p.swapped ? pre.p_b : pre.p_a, B: p.swapped ? pre.p_a : pre.p_b, tie: pre.p_tie }[label];
  hint.dataset.label = label;
  hint.textContent = `judge (${p.preannotation.judge}): ${label === "tie" ? "tie" : label + " better"} · p ${prob.toFixed(2)}`;
}

function selectSegment(index, doSeek = true) {
  state.segIdx = Math.max(0, Math.min(pair().segments.length - 1, index));
  renderSegments();
  if (doSeek) {
    if (player.playing) player.pause();
    player.seekFrame(segment().start_frame);
  }
}

function showPair(index, segIndex = 0) {
  if (!state.data || !state.data.pairs.length) return;
  state.pairIdx = Math.max(0, Math.min(state.data.pairs.length - 1, index));
  const p = pair();
  state.segIdx = Math.max(0, Math.min(p.segments.length - 1, segIndex));
  const [srcLeft, srcRight] = p.swapped ? [p.videos.B, p.videos.A] : [p.videos.A, p.videos.B];
  player.load(srcLeft, srcRight, p.fps, p.num_frames);
  const ref = $("#video-ref");
  $("#ref-figure").hidden = !p.videos.ref;
  if (p.videos.ref) ref.src = p.videos.ref; else ref.removeAttribute("src");
  $("#pair-counter").textContent = `Pair ${state.pairIdx + 1} / ${state.data.pairs.length}`;
  $("#pair-id").textContent = p.pair_id;
  $("#prompt").textContent = p.prompt;
  $("#prompt").title = p.prompt;
  renderTimeline();
  selectSegment(segIndex);
}

function nextSegment() {
  if (!pair()) return;
  if (state.segIdx < pair().segments.length - 1) selectSegment(state.segIdx + 1);
  else nextPair();
}

function prevSegment() {
  if (!pair()) return;
  if (state.segIdx > 0) selectSegment(state.segIdx - 1);
  else if (state.pairIdx > 0) showPair(state.pairIdx - 1, state.data.pairs[state.pairIdx - 1].segments.length - 1);
}

function nextPair() {
  if (!state.data) return;
  if (state.pairIdx < state.data.pairs.length - 1) showPair(state.pairIdx + 1, 0);
  else say(`That was the last pair: ${$("#progress").textContent}. Export when you are ready.`);
}

function prevPair() { if (state.data && state.pairIdx > 0) showPair(state.pairIdx - 1, 0); }

// ------------------------------------------------------------------ answers

function requireAnnotator() {
  if (state.annotator) return true;
  $("#annotator").classList.add("needed");
  $("#annotator").focus();
  say("Enter your annotator name first.", true);
  return false;
}

// Posts go out one after another, so the server logs them in the order they were given.
function save(pairIdx, segIdx, entry) {
  const p = state.data.pairs[pairIdx];
  const body = {
    manifest: state.manifest, pair_id: p.pair_id, segment: segIdx, label: entry.label,
    annotator: state.annotator, blind: state.blind,
  };
  if (entry.note) body.note = entry.note;
  state.pending++;
  setSaveStatus("saving", "saving…");
  state.saveChain = state.saveChain.then(async () => {
    try {
      await api("/annotations", { method: "POST", json: body });
      state.pending--;
      if (state.pending === 0) setSaveStatus("saved", `saved ✓ ${p.pair_id} #${segIdx + 1}`);
      else setSaveStatus("saving", "saving…");
    } catch (e) {
      state.pending--;
      delete state.answers[pairIdx][segIdx]; // not saved: do not pretend it was
      setSaveStatus("error", `not saved: ${e.message}`);
      say(`Answer for ${p.pair_id} segment ${segIdx + 1} not saved: ${e.message}`, true);
      if (pairIdx === state.pairIdx) renderSegments();
    }
  });
}

function answer(shownLabel) {
  if (!pair() || !requireAnnotator()) return;
  const p = pair();
  const draft = state.drafts[state.pairIdx][state.segIdx];
  const noteField = $("#note").value.trim();
  const entry = { label: truth(shownLabel, p), note: noteField || draft || null };
  state.answers[state.pairIdx][state.segIdx] = entry;
  renderSegments();
  save(state.pairIdx, state.segIdx, entry);
  if ($("#auto-advance").checked) advance();
}

// Auto-advance: the next unanswered segment of this pair, else of the pairs after it.
function advance() {
  const pairs = state.data.pairs;
  for (let i = state.pairIdx; i < pairs.length; i++) {
    const seg = pairs[i].segments.find((s) => !state.answers[i][s.index] && (i > state.pairIdx || s.index > state.segIdx));
    if (!seg) continue;
    if (i === state.pairIdx) selectSegment(seg.index); else showPair(i, seg.index);
    return;
  }
  if (state.segIdx < pair().segments.length - 1) selectSegment(state.segIdx + 1);
}

function noteChanged() {
  if (!pair()) return;
  const text = $("#note").value.trim();
  const a = state.answers[state.pairIdx][state.segIdx];
  if (!a) { state.drafts[state.pairIdx][state.segIdx] = text; return; }
  if ((a.note || "") === text || !requireAnnotator()) return;
  a.note = text || null;
  save(state.pairIdx, state.segIdx, a);
}

// ------------------------------------------------------------------ loading

async function load() {
  $("#manifest-name").textContent = state.manifest || "(no manifest)";
  $("#blind-toggle").checked = state.blind;
  if (!state.manifest) { say("Add ?manifest=<manifest path under the media root> to the address.", true, true); return; }
  const q = new URLSearchParams({ manifest: state.manifest, annotator: state.annotator, blind: state.blind ? "1" : "0" });
  for (const name of QUEUE_PARAMS) if (params.get(name)) q.set(name, params.get(name));
  const generation = ++state.loads; // a slower, older load must not overwrite a newer one
  let data;
  try {
    data = await api("/annotate/api/pairs?" + q.toString());
  } catch (e) {
    if (generation === state.loads) say(`Cannot load the manifest: ${e.message}`, true, true);
    return;
  }
  if (generation !== state.loads) return;
  state.data = data;
  state.answers = data.pairs.map((p) => {
    const out = {};
    for (const [k, v] of Object.entries(p.answers)) out[Number(k)] = { label: v.label, note: v.note };
    return out;
  });
  state.drafts = data.pairs.map(() => ({}));
  $("#rubric-text").textContent = data.rubric;
  renderProblems(data.problems);
  if (!data.pairs.length) { say("This manifest has no pair that can be annotated.", true, true); return; }
  const [pi, si] = resumePosition();
  showPair(pi, si);
  if (!state.annotator) requireAnnotator();
}

function renderProblems(problems) {
  const box = $("#problems");
  box.hidden = !problems.length;
  if (!problems.length) return;
  box.querySelector("summary").textContent = `${problems.length} pair(s) cannot be annotated`;
  const list = box.querySelector("ul");
  list.replaceChildren(...problems.map((pr) => {
    const li = document.createElement("li");
    li.textContent = `${pr.pair_id}: ${pr.message}`;
    return li;
  }));
}

function setAnnotator(name) {
  name = name.trim();
  if (name && !ANNOTATOR_RE.test(name)) {
    $("#annotator").classList.add("needed");
    say("Annotator: letters, digits, '_', '.', '@', '-' only (no spaces), at most 64 characters.", true);
    return;
  }
  $("#annotator").classList.toggle("needed", !name);
  if (name) $("#message").hidden = true; // the "enter your name" reminder is answered
  if (name === state.annotator) return;
  state.annotator = name;
  if (name) localStorage.setItem(ANNOTATOR_KEY, name);
  load(); // this annotator's answers (and, in blind mode, side order)
}

async function exportLabels() {
  if (!requireAnnotator()) return;
  await state.saveChain; // every answer given so far is in
  try {
    const res = await api("/annotations/export", {
      method: "POST", json: { manifest: state.manifest, annotator: state.annotator },
    });
    const inc = res.incomplete.length ? `; ${res.incomplete.length} pair(s) not finished, left out` : "";
    say(`Exported ${res.records} pair(s) to ${res.path}${inc}.`, false, true);
    $("#export-btn").dataset.path = res.path;
    $("#export-btn").dataset.records = String(res.records);
    $("#download-link").hidden = false;
    $("#download-link").href = "#";
  } catch (e) {
    say(`Export failed: ${e.message}`, true);
  }
}

async function downloadExport(ev) {
  ev.preventDefault();
  const query = new URLSearchParams({ manifest: state.manifest, annotator: state.annotator });
  try {
    await download("/annotations/export?" + query.toString(), "labels.human.jsonl");
  } catch (e) {
    say(e.message, true);
  }
}

// ------------------------------------------------------------------ wiring

function onKey(ev) {
  const tag = (ev.target && ev.target.tagName) || "";
  const typing = tag === "TEXTAREA" || tag === "SELECT" || (tag === "INPUT" && ev.target.type === "text");
  if (typing) {
    // Typing a note or a name never triggers shortcuts; Enter/Escape hand the keys back.
    if (ev.key === "Escape" || (ev.key === "Enter" && tag === "INPUT")) ev.target.blur();
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const actions = {
    1: () => answer("A"), 2: () => answer("B"), 3: () => answer("tie"),
    n: nextSegment, p: prevSegment, N: nextPair, P: prevPair,
    " ": togglePlay,
    ArrowRight: () => stepFrame(1), ArrowLeft: () => stepFrame(-1),
  };
  const act = actions[ev.key];
  if (!act) return;
  ev.preventDefault();
  // A focused button or checkbox must not also act on the key (space would click or toggle it).
  if (ev.target && ["BUTTON", "INPUT"].includes(ev.target.tagName)) ev.target.blur();
  act();
}

document.addEventListener("keydown", onKey);
$("#play-btn").addEventListener("click", togglePlay);
$("#frame-back").addEventListener("click", () => stepFrame(-1));
$("#frame-fwd").addEventListener("click", () => stepFrame(1));
$("#speed").addEventListener("change", () => {
  player.setRate(Number($("#speed").value));
  $("#speed").blur(); // give the keys back to the shortcuts
});
$("#loop").addEventListener("change", () => $("#loop").blur());
for (const lab of ["A", "B", "tie"]) $(`#answer-${lab}`).addEventListener("click", () => answer(lab));
$("#next-seg").addEventListener("click", nextSegment);
$("#prev-seg").addEventListener("click", prevSegment);
$("#next-pair").addEventListener("click", nextPair);
$("#prev-pair").addEventListener("click", prevPair);
$("#note").addEventListener("change", noteChanged);
$("#annotator").addEventListener("change", (ev) => setAnnotator(ev.target.value));
$("#export-btn").addEventListener("click", exportLabels);
$("#download-link").addEventListener("click", downloadExport);
// Queue controls reload the page with their setting in the address, like the blind toggle.
function setQuery(name, value) {
  const q = new URLSearchParams(location.search);
  if (value) q.set(name, value); else q.delete(name);
  location.search = q.toString();
}
for (const el of document.querySelectorAll(".queue-control")) el.hidden = !state.labels;
$("#order").value = params.get("order") === "least-confident" ? "least-confident" : "manifest";
$("#order").addEventListener("change", (ev) => setQuery("order", ev.target.value === "manifest" ? "" : ev.target.value));
$("#preannotate-toggle").checked = state.preannotations;
$("#preannotate-toggle").addEventListener("change", (ev) => setQuery("preannotations", ev.target.checked ? "1" : ""));
$("#auto-advance").checked = localStorage.getItem(AUTO_ADVANCE_KEY) === "1";
$("#auto-advance").addEventListener("change", (ev) => {
  localStorage.setItem(AUTO_ADVANCE_KEY, ev.target.checked ? "1" : "0");
  ev.target.blur();
});
$("#blind-toggle").addEventListener("change", (ev) => {
  const q = new URLSearchParams(location.search);
  if (ev.target.checked) q.set("blind", "1"); else q.delete("blind");
  location.search = q.toString();
});
$("#timeline").addEventListener("click", (ev) => {
  if (!pair()) return;
  const box = $("#timeline").getBoundingClientRect();
  const frame = Math.floor(((ev.clientX - box.left) / box.width) * player.numFrames);
  if (player.playing) player.pause();
  player.seekFrame(frame); // the current segment follows the playhead
});
window.addEventListener("beforeunload", (ev) => { if (state.pending > 0) ev.preventDefault(); });

const saved = localStorage.getItem(ANNOTATOR_KEY) || "";
$("#annotator").value = saved;
state.annotator = ANNOTATOR_RE.test(saved) ? saved : "";
load();
