// GET /: manuscripts (upload, start, delete) and sessions (filtered by status), the live
// ones following their WebSocket events.
import { api, SessionEvents } from "./api.js";
import { clear, el, progressBar, say, setProgress, shortId, statusBadge, when } from "./dom.js";

const STATUSES = ["pending", "queued", "running", "paused", "completed", "failed", "cancelled", "interrupted"];
const LIVE = new Set(["pending", "queued", "running"]);
const PAGE = 20;
const STYLES = ["watercolor", "digital_painting", "oil_painting", "pencil_sketch", "comic_book"];

export function showDashboard(main) {
  document.title = "Illustrator";
  const state = { titles: new Map(), streams: new Map(), offset: 0 };
  const uploadMessage = el("p", { class: "notice", role: "status", hidden: true, id: "upload-message" });
  const manuscriptMessage = el("p", { class: "notice", role: "alert", hidden: true, id: "manuscript-message" });
  const manuscriptList = el("div", { id: "manuscripts" });
  const sessionMessage = el("p", { class: "notice", role: "alert", hidden: true, id: "session-message" });
  const sessionList = el("div", { id: "sessions" });
  const pager = el("div", { class: "pager" });
  const filter = el(
    "select",
    { id: "status-filter", onchange: () => ((state.offset = 0), loadSessions()) },
    el("option", { value: "", text: "all" }),
    STATUSES.map((s) => el("option", { value: s, text: s })),
  );
  const fileInput = el("input", { id: "upload-file", type: "file", name: "file", accept: ".txt,.md,.markdown,.json", required: true });
  const titleInput = el("input", { id: "upload-title", type: "text", name: "title", maxlength: 500 });
  const uploadForm = el(
    "form",
    { id: "upload-form", class: "upload", onsubmit: (event) => upload(event) },
    el("label", { for: "upload-file", text: "Manuscript file (.txt, .md or .json)" }),
    fileInput,
    el("label", { for: "upload-title", text: "Title (optional)" }),
    titleInput,
    el("button", { type: "submit", text: "Upload" }),
  );

  clear(main).append(
    el("h1", { text: "Manuscripts and sessions" }),
    el("section", { "aria-labelledby": "manuscripts-title" },
      el("h2", { id: "manuscripts-title", text: "Manuscripts" }),
      uploadForm, uploadMessage, manuscriptMessage, manuscriptList),
    el("section", { "aria-labelledby": "sessions-title" },
      el("h2", { id: "sessions-title", text: "Sessions" }),
      el("div", { class: "filter" }, el("label", { for: "status-filter", text: "Status" }), filter),
      sessionMessage, sessionList, pager),
  );

  async function upload(event) {
    event.preventDefault();
    const form = new FormData();
    if (titleInput.value.trim()) form.append("title", titleInput.value.trim());
    form.append("file", fileInput.files[0]);
    say(uploadMessage, "Uploading…");
    try {
      const answer = await api("POST", "/api/manuscripts", { form });
      say(uploadMessage, `Stored “${answer.manuscript.title}” (${answer.manuscript.total_chapters} chapters).`, "success");
      uploadForm.reset();
      await loadManuscripts();
    } catch (error) {
      say(uploadMessage, `Upload refused: ${error.message}`, "error");
    }
  }

  async function loadManuscripts() {
    let answer;
    try {
      answer = await api("GET", "/api/manuscripts?limit=100");
    } catch (error) {
      say(manuscriptMessage, `Manuscripts could not be listed: ${error.message}`, "error");
      return;
    }
    const rows = answer.manuscripts.map((m) => {
      state.titles.set(m.manuscript_id, m.title);
      const style = el("select", { "aria-label": `Art style for ${m.title}` }, STYLES.map((s) => el("option", { value: s, text: s.replace(/_/g, " ") })));
      const moments = el("input", { type: "number", min: 1, max: 20, value: 2, "aria-label": `Moments per chapter for ${m.title}`, class: "narrow" });
      return el("tr", { dataset: { manuscriptId: m.manuscript_id } },
        el("td", {}, el("a", { href: `/ui/manuscripts/${m.manuscript_id}`, class: "manuscript-title", text: m.title || "(untitled)" })),
        el("td", { text: m.author }),
        el("td", { text: m.total_chapters }),
        el("td", { text: when(m.created_at) }),
        el("td", { class: "actions" }, style, moments,
          el("button", { type: "button", class: "start", text: "Start session", onclick: () => start(m, style.value, Number(moments.value)) }),
          el("button", { type: "button", class: "danger delete", text: "Delete", onclick: () => removeManuscript(m) })),
      );
    });
    clear(manuscriptList).append(
      rows.length
        ? table(["Title", "Author", "Chapters", "Added", "Actions"], rows, "manuscript-table")
        : el("p", { text: "No manuscripts yet: upload one above." }),
    );
  }

  async function start(m, artStyle, moments) {
    try {
      const answer = await api("POST", "/api/process", {
        json: { manuscript_id: m.manuscript_id, style_config: { art_style: artStyle }, max_emotional_moments: moments || 2 },
      });
      say(manuscriptMessage, `${answer.message}: session ${shortId(answer.session_id)}.`, "success");
      filter.value = "";
      state.offset = 0;
      await loadSessions();
    } catch (error) {
      say(manuscriptMessage, `Could not start: ${error.message}`, "error");
    }
  }

  async function removeManuscript(m) {
    if (!confirm(`Delete the manuscript “${m.title}”? Its sessions stay.`)) return;
    try {
      await api("DELETE", `/api/manuscripts/${m.manuscript_id}`);
      say(manuscriptMessage, `Deleted “${m.title}”.`, "success");
      await loadManuscripts();
    } catch (error) {
      say(manuscriptMessage, `Could not delete: ${error.message}`, "error");
    }
  }

  async function loadSessions() {
    const status = filter.value;
    const query = `limit=${PAGE}&offset=${state.offset}` + (status ? `&status=${encodeURIComponent(status)}` : "");
    let answer;
    try {
      answer = await api("GET", `/api/sessions?${query}`);
      say(sessionMessage, "");
    } catch (error) {
      say(sessionMessage, `Sessions could not be listed: ${error.message}`, "error");
      return;
    }
    for (const stream of state.streams.values()) stream.stop();
    state.streams.clear();
    const rows = answer.sessions.map((s) => sessionRow(s));
    clear(sessionList).append(
      rows.length
        ? table(["Session", "Manuscript", "Status", "Progress", "Chapter", "Images", "Started", "Last checkpoint"], rows, "session-table")
        : el("p", { text: status ? `No ${status} sessions.` : "No sessions yet." }),
    );
    clear(pager);
    if (state.offset > 0) pager.append(el("button", { type: "button", text: "Newer", onclick: () => ((state.offset = Math.max(0, state.offset - PAGE)), loadSessions()) }));
    if (answer.next_offset !== null) pager.append(el("button", { type: "button", text: "Older", onclick: () => ((state.offset = answer.next_offset), loadSessions()) }));
  }

  function sessionRow(s) {
    const bar = progressBar(s.progress, `Progress of session ${shortId(s.session_id)}`);
    const cells = {
      status: el("td", {}, statusBadge(s.status)),
      percent: el("span", { class: "percent", text: `${s.progress}%` }),
      chapter: el("td", { class: "chapter", text: `${s.chapters_processed} of ${s.total_chapters} done` }),
      images: el("td", { class: "images", text: s.images_generated }),
      checkpoint: el("td", { class: "checkpoint", text: "" }),
    };
    const row = el("tr", { dataset: { sessionId: s.session_id, status: s.status } },
      el("td", {}, el("a", { href: `/ui/sessions/${s.session_id}`, class: "session-link", text: shortId(s.session_id) })),
      el("td", {}, el("a", { href: `/ui/manuscripts/${s.manuscript_id}`, text: state.titles.get(s.manuscript_id) || shortId(s.manuscript_id) })),
      cells.status,
      el("td", { class: "progress" }, bar, " ", cells.percent),
      cells.chapter, cells.images,
      el("td", { text: when(s.started_at) }),
      cells.checkpoint,
    );
    const update = (frame) => {
      if (frame.status) {
        row.dataset.status = frame.status;
        clear(cells.status).append(statusBadge(frame.status));
      }
      if (Number.isInteger(frame.progress)) {
        setProgress(bar, frame.progress);
        cells.percent.textContent = `${frame.progress}%`;
      }
      if (Number.isInteger(frame.total_chapters) && frame.total_chapters > 0) {
        cells.chapter.textContent = frame.current_chapter
          ? `${frame.current_chapter} of ${frame.total_chapters}`
          : `${frame.chapters_processed ?? ""} of ${frame.total_chapters} done`;
      }
      if (Number.isInteger(frame.images_generated)) cells.images.textContent = frame.images_generated;
      if (frame.checkpoint_type) cells.checkpoint.textContent = `${frame.checkpoint_type} #${frame.sequence_number} · ${when(frame.timestamp)}`;
    };
    api("GET", `/api/sessions/${s.session_id}`).then((record) => {
      const view = record.status;
      const doc = record.session || {};
      const cps = doc.checkpoints || [];
      const last = cps[cps.length - 1];
      if (last && !cells.checkpoint.textContent) {
        cells.checkpoint.textContent = `${last.checkpoint_type} #${last.sequence_number} · ${when(last.created_at)}`;
      } else if (!cells.checkpoint.textContent && view.last_completed_step) {
        cells.checkpoint.textContent = `${view.last_completed_step} #${view.last_sequence_number}`;
      }
      if (view.current_chapter && cells.chapter.textContent.endsWith("done") && LIVE.has(view.status)) {
        cells.chapter.textContent = `${view.current_chapter} of ${view.total_chapters}`;
      }
    }, () => {});
    if (LIVE.has(s.status) || s.live) {
      const stream = new SessionEvents(s.session_id, {
        onFrame: (frame) => {
          if (frame.type === "snapshot" || frame.type === "progress" || frame.type === "status") update(frame);
          else if (frame.type === "complete") update({ status: "completed", progress: 100 });
          else if (frame.type === "error") update({ status: "failed" });
        },
        onState: (s2) => (row.dataset.connection = s2),
      });
      state.streams.set(s.session_id, stream.start());
    }
    return row;
  }

  loadManuscripts().then(loadSessions);
}

export function table(headings, rows, id) {
  // Labels for the phone layout, where each row is a card of labelled cells.
  for (const row of rows) [...row.children].forEach((cell, i) => (cell.dataset.label = headings[i]));
  return el("div", { class: "table-wrap" },
    el("table", { id }, el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col", text: h })))), el("tbody", {}, rows)));
}
