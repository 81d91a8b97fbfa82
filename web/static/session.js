// /ui/sessions/{id}: status and progress, the spec's four steps, the checkpoint timeline,
// the gallery, the log (paged back with ?after=), and the controls.
import { api, fileUrl, SessionEvents } from "./api.js";
import { clear, el, progressBar, say, setProgress, shortId, statusBadge, when } from "./dom.js";

const STEPS = ["Text analysis", "Prompt engineering", "Image generation", "Output"];
const LOG_PAGE = 100;
const REPLAY = 300;

export async function showSession(main, sessionId) {
  document.title = `Session ${shortId(sessionId)} · Illustrator`;
  const bar = progressBar(0, "Session progress");
  const refs = {
    title: el("h1", { text: `Session ${shortId(sessionId)}` }),
    manuscript: el("p", { class: "sub" }),
    status: el("span", { id: "session-status" }),
    connection: el("span", { id: "connection", class: "connection", role: "status" }),
    percent: el("span", { id: "progress-text" }),
    counts: el("span", { id: "counts" }),
    action: el("p", { id: "action-message", class: "notice", role: "alert", hidden: true }),
    steps: el("ol", { id: "steps", class: "steps" }),
    timeline: el("ol", { id: "timeline", class: "timeline" }),
    checkpoint: el("pre", { id: "checkpoint-data", class: "data", tabindex: 0, hidden: true }),
    gallery: el("div", { id: "gallery", class: "gallery" }),
    log: el("ol", { id: "log", class: "log" }),
    earlier: el("button", { id: "log-earlier", type: "button", text: "Load earlier lines", hidden: true }),
  };
  const seen = { checkpoints: new Map(), images: new Set(), logs: new Set(), earliestLog: null };
  let status = "";
  let stepStatus = {};

  const button = (name, label, run) =>
    el("button", { type: "button", id: `action-${name}`, class: name === "delete" || name === "cancel" ? "danger" : "", text: label, onclick: run });
  const controls = el("div", { class: "controls", role: "group", "aria-label": "Session actions" },
    button("pause", "Pause", () => act("pause", `/api/process/${sessionId}/pause`)),
    button("resume", "Resume", () => act("resume", `/api/process/${sessionId}/resume`)),
    button("cancel", "Cancel", () => act("cancel", `/api/process/${sessionId}/cancel`)),
    button("restart", "Restart", () => act("restart", `/api/process/${sessionId}/restart`)),
    button("delete", "Delete", () => remove()),
  );
  STEPS.forEach((name, index) => refs.steps.append(el("li", { dataset: { step: index, state: "pending" } }, el("span", { class: "step-name", text: name }), " ", el("span", { class: "step-state", text: "pending" }))));

  clear(main).append(
    refs.title, refs.manuscript,
    el("p", { class: "state" }, refs.status, " ", refs.connection),
    el("p", { class: "progress-line" }, bar, " ", refs.percent, " ", refs.counts),
    controls, refs.action,
    el("div", { class: "columns" },
      el("section", { "aria-labelledby": "steps-title" }, el("h2", { id: "steps-title", text: "Steps" }), refs.steps),
      el("section", { "aria-labelledby": "timeline-title" }, el("h2", { id: "timeline-title", text: "Checkpoints" }),
        el("p", { class: "hint", text: "Choose a checkpoint to see its data." }), refs.timeline, refs.checkpoint)),
    el("section", { "aria-labelledby": "gallery-title" }, el("h2", { id: "gallery-title", text: "Images" }), refs.gallery),
    el("section", { "aria-labelledby": "log-title" }, el("h2", { id: "log-title", text: "Log" }), refs.earlier, refs.log),
  );

  function setStatus(value) {
    if (!value || value === status) return;
    status = value;
    clear(refs.status).append(statusBadge(value));
    main.dataset.status = value;
  }

  function setSteps(steps) {
    stepStatus = { ...stepStatus, ...steps };
    let current = null;
    for (const item of refs.steps.children) {
      const value = stepStatus[item.dataset.step] || "pending";
      item.dataset.state = value;
      item.querySelector(".step-state").textContent = value;
      item.removeAttribute("aria-current");
      if (value === "processing" && current === null) current = item;
    }
    if (current) current.setAttribute("aria-current", "step");
  }

  function setCounts(frame) {
    if (Number.isInteger(frame.progress)) {
      setProgress(bar, frame.progress);
      refs.percent.textContent = `${frame.progress}%`;
    }
    const chapter = frame.current_chapter ? `chapter ${frame.current_chapter} of ${frame.total_chapters}` : `${frame.total_chapters || 0} chapters`;
    if (Number.isInteger(frame.images_generated)) refs.counts.textContent = `· ${chapter} · ${frame.images_generated} images`;
  }

  function addCheckpoint(cp) {
    if (seen.checkpoints.has(cp.sequence_number)) {
      if (cp.checkpoint_data) seen.checkpoints.get(cp.sequence_number).data = cp;
      return;
    }
    const entry = { data: cp.checkpoint_data ? cp : null };
    const label = `#${cp.sequence_number} ${cp.checkpoint_type}` + (cp.chapter_number ? ` · chapter ${cp.chapter_number}` : "") + ` · ${when(cp.created_at)}`;
    const item = el("li", { dataset: { sequence: cp.sequence_number, type: cp.checkpoint_type } },
      el("button", { type: "button", "aria-controls": "checkpoint-data", text: label, onclick: () => showCheckpoint(cp.sequence_number, item) }));
    entry.item = item;
    seen.checkpoints.set(cp.sequence_number, entry);
    const after = [...refs.timeline.children].find((li) => Number(li.dataset.sequence) > cp.sequence_number);
    refs.timeline.insertBefore(item, after || null);
  }

  async function showCheckpoint(sequence, item) {
    for (const li of refs.timeline.children) li.removeAttribute("aria-current");
    item.setAttribute("aria-current", "true");
    let entry = seen.checkpoints.get(sequence);
    if (!entry.data) await loadCheckpoints();
    entry = seen.checkpoints.get(sequence);
    refs.checkpoint.hidden = false;
    refs.checkpoint.textContent = entry.data ? JSON.stringify(entry.data, null, 2) : "This checkpoint's data is not stored yet; try again in a moment.";
  }

  async function loadCheckpoints() {
    try {
      const answer = await api("GET", `/api/sessions/${sessionId}/checkpoints`);
      answer.checkpoints.forEach(addCheckpoint);
    } catch (error) {
      say(refs.action, `Checkpoints could not be read: ${error.message}`, "error");
    }
  }

  function addImage(image) {
    const url = image.url || image.image_url;
    if (!url || seen.images.has(url)) return;
    seen.images.add(url);
    const img = el("img", { alt: `Chapter ${image.chapter_number}, scene ${image.scene_number}`, loading: "lazy", width: 256, height: 256 });
    fileUrl(url).then((src) => (img.src = src), () => (img.alt += " (not available)"));
    refs.gallery.append(el("figure", { dataset: { url } }, img,
      el("figcaption", {}, el("strong", { text: `Chapter ${image.chapter_number}, scene ${image.scene_number}` }), el("br"), String(image.prompt || ""))));
  }

  function logLine(frame) {
    return el("li", { dataset: { seq: frame.event_seq, level: frame.level || "info" } },
      el("time", { datetime: frame.timestamp || "", text: when(frame.timestamp) }), " ",
      el("span", { class: "level", text: frame.level || "info" }), " ",
      el("span", { class: "message", text: frame.message || "" }));
  }

  function addLog(frame, atStart = false) {
    if (seen.logs.has(frame.event_seq)) return;
    seen.logs.add(frame.event_seq);
    if (seen.earliestLog === null || frame.event_seq < seen.earliestLog) seen.earliestLog = frame.event_seq;
    const line = logLine(frame);
    if (atStart) {
      const next = [...refs.log.children].find((li) => Number(li.dataset.seq) > frame.event_seq);
      refs.log.insertBefore(line, next || null);
    } else refs.log.append(line);
  }

  async function loadEarlier(before) {
    // The API pages forward from ?after=: the page before `before` starts LOG_PAGE events earlier.
    const after = Math.max(0, before - 1 - LOG_PAGE);
    try {
      const answer = await api("GET", `/api/sessions/${sessionId}/logs?after=${after}&limit=${LOG_PAGE}`);
      answer.logs.filter((f) => f.type === "log" && f.event_seq < before).forEach((f) => addLog(f, true));
      refs.earlier.hidden = after === 0;
      refs.earlier.onclick = () => loadEarlier(after + 1);
    } catch (error) {
      say(refs.action, `Earlier lines could not be read: ${error.message}`, "error");
    }
  }

  function onFrame(frame) {
    if (Number.isInteger(frame.event_seq)) refs.connection.dataset.lastEvent = frame.event_seq;
    switch (frame.type) {
      case "snapshot":
        setStatus(frame.status);
        setSteps(frame.step_status || {});
        setCounts(frame);
        break;
      case "progress":
        setCounts(frame);
        addCheckpoint({ sequence_number: frame.sequence_number, checkpoint_type: frame.checkpoint_type, chapter_number: frame.current_chapter, created_at: frame.timestamp });
        break;
      case "status":
        setStatus(frame.status);
        break;
      case "step":
        setSteps({ [frame.step]: frame.status });
        break;
      case "image":
        addImage(frame);
        break;
      case "log":
        addLog(frame);
        break;
      case "complete":
        setStatus("completed");
        break;
      case "error":
        setStatus("failed");
        break;
      case "resync":
        break; // the socket closes; the reconnection replays after the last event seen
      default:
        break;
    }
  }

  async function act(name, path) {
    say(refs.action, "");
    try {
      const answer = await api("POST", path);
      say(refs.action, answer.message || `${name} done`, "success");
      if (name === "restart" && answer.session_id && answer.session_id !== sessionId) {
        refs.action.append(" ", el("a", { href: `/ui/sessions/${answer.session_id}`, text: "Open the new session" }));
      }
    } catch (error) {
      say(refs.action, `${name} refused (${error.status}): ${error.message}`, "error");
    }
  }

  async function remove() {
    if (!confirm("Delete this session, its checkpoints, log and images?")) return;
    try {
      await api("DELETE", `/api/sessions/${sessionId}`);
      events.stop();
      clear(main).append(el("h1", { text: "Session deleted" }), el("p", {}, el("a", { href: "/", text: "Back to the dashboard" })));
    } catch (error) {
      say(refs.action, `delete refused (${error.status}): ${error.message}`, "error");
    }
  }

  let record;
  try {
    record = await api("GET", `/api/sessions/${sessionId}`);
  } catch (error) {
    clear(main).append(el("h1", { text: "Session not available" }), el("p", { role: "alert", text: error.message }), el("p", {}, el("a", { href: "/", text: "Back to the dashboard" })));
    return;
  }
  const view = record.status;
  setStatus(view.status);
  setSteps(view.step_status || {});
  setCounts(view);
  api("GET", `/api/manuscripts/${view.manuscript_id}`).then((m) => {
    clear(refs.manuscript).append("Manuscript: ", el("a", { href: `/ui/manuscripts/${view.manuscript_id}`, text: m.manuscript.title || "(untitled)" }));
  }, () => refs.manuscript.append(el("a", { href: `/ui/manuscripts/${view.manuscript_id}`, text: "Manuscript" })));
  await loadCheckpoints();
  api("GET", `/api/sessions/${sessionId}/images`).then((a) => a.images.forEach(addImage), () => {});
  const last = Number(view.last_event_seq || 0);
  const after = Math.max(0, last - REPLAY);
  if (after > 0) {
    refs.earlier.hidden = false;
    refs.earlier.onclick = () => loadEarlier(seen.earliestLog ?? after + 1);
  }
  const events = new SessionEvents(sessionId, {
    after,
    onFrame,
    onState: (value) => {
      refs.connection.textContent = value === "live" ? "live" : value === "connecting" ? "connecting…" : "reconnecting…";
      refs.connection.dataset.state = value;
    },
  }).start();
}
