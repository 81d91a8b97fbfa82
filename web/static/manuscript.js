// /ui/manuscripts/{id}: the chapters with their emotional moments and images (from the
// latest completed session, else the latest), the manuscript's sessions, and exports.
import { api, fileUrl } from "./api.js";
import { clear, el, say, shortId, statusBadge, when } from "./dom.js";
import { table } from "./dashboard.js";

export async function showManuscript(main, manuscriptId) {
  let manuscript;
  try {
    manuscript = (await api("GET", `/api/manuscripts/${manuscriptId}`)).manuscript;
  } catch (error) {
    clear(main).append(el("h1", { text: "Manuscript not available" }), el("p", { role: "alert", text: error.message }), el("p", {}, el("a", { href: "/", text: "Back to the dashboard" })));
    return;
  }
  document.title = `${manuscript.title} · Illustrator`;
  const message = el("p", { id: "export-message", class: "notice", role: "status", hidden: true });
  const exports = el("ul", { id: "exports", class: "exports" });
  const sessionsBox = el("div", { id: "manuscript-sessions" });
  const chapters = el("div", { id: "chapters" });
  const shownFrom = el("p", { class: "hint" });

  clear(main).append(
    el("h1", { id: "manuscript-title", text: manuscript.title || "(untitled)" }),
    el("p", { class: "sub", text: [manuscript.author, manuscript.genre, `${manuscript.total_chapters} chapters`].filter(Boolean).join(" · ") }),
    manuscript.description ? el("p", { text: manuscript.description }) : null,
    el("section", { "aria-labelledby": "export-title" }, el("h2", { id: "export-title", text: "Export" }),
      el("div", { class: "controls" },
        el("button", { type: "button", id: "export-html", text: "Export HTML", onclick: () => exportAs("html") }),
        el("button", { type: "button", id: "export-json", text: "Export JSON", onclick: () => exportAs("json") })),
      message, exports),
    el("section", { "aria-labelledby": "msessions-title" }, el("h2", { id: "msessions-title", text: "Sessions" }), sessionsBox),
    el("section", { "aria-labelledby": "chapters-title" }, el("h2", { id: "chapters-title", text: "Chapters" }), shownFrom, chapters),
  );

  async function exportAs(format) {
    say(message, `Exporting ${format.toUpperCase()}…`);
    try {
      const answer = await api("POST", `/api/manuscripts/${manuscriptId}/export?format=${format}`);
      const href = await fileUrl(answer.url);
      exports.prepend(el("li", {}, el("a", { href, download: answer.filename, class: `export-${format}`, text: answer.filename }), ` (${answer.images_count} images)`));
      say(message, `${format.toUpperCase()} export ready.`, "success");
    } catch (error) {
      say(message, `Export refused: ${error.message}`, "error");
    }
  }

  let sessions = [];
  try {
    sessions = (await api("GET", `/api/sessions?manuscript_id=${manuscriptId}&limit=50`)).sessions;
  } catch (error) {
    say(message, `Sessions could not be listed: ${error.message}`, "error");
  }
  clear(sessionsBox).append(
    sessions.length
      ? table(["Session", "Status", "Progress", "Images", "Started"], sessions.map((s) => el("tr", {},
          el("td", {}, el("a", { href: `/ui/sessions/${s.session_id}`, text: shortId(s.session_id) })),
          el("td", {}, statusBadge(s.status)), el("td", { text: `${s.progress}%` }),
          el("td", { text: s.images_generated }), el("td", { text: when(s.started_at) }))), "msessions-table")
      : el("p", { text: "No session has illustrated this manuscript yet." }),
  );

  const chosen = sessions.find((s) => s.status === "completed") || sessions[0];
  const moments = new Map();
  const images = new Map();
  if (chosen) {
    shownFrom.textContent = `Moments and images of session ${shortId(chosen.session_id)} (${chosen.status}).`;
    try {
      const [cps, imgs] = await Promise.all([
        api("GET", `/api/sessions/${chosen.session_id}/checkpoints`),
        api("GET", `/api/sessions/${chosen.session_id}/images`),
      ]);
      for (const cp of cps.checkpoints) {
        const found = cp.checkpoint_data && cp.checkpoint_data.emotional_moments;
        if (cp.chapter_number && Array.isArray(found)) moments.set(cp.chapter_number, found);
      }
      for (const image of imgs.images) {
        if (!images.has(image.chapter_number)) images.set(image.chapter_number, []);
        images.get(image.chapter_number).push(image);
      }
    } catch (error) {
      say(message, `The session's results could not be read: ${error.message}`, "error");
    }
  }
  for (const chapter of manuscript.chapters) {
    const found = moments.get(chapter.number) || [];
    const pictures = images.get(chapter.number) || [];
    const gallery = el("div", { class: "gallery" });
    for (const image of pictures) {
      const img = el("img", { alt: `Chapter ${image.chapter_number}, scene ${image.scene_number}`, loading: "lazy", width: 256, height: 256 });
      fileUrl(image.url).then((src) => (img.src = src), () => (img.alt += " (not available)"));
      gallery.append(el("figure", {}, img, el("figcaption", { text: image.prompt || "" })));
    }
    chapters.append(el("article", { class: "chapter", dataset: { chapter: chapter.number } },
      el("h3", { text: `Chapter ${chapter.number}: ${chapter.title || ""}` }),
      el("p", { class: "sub", text: `${chapter.word_count ?? ""} words · ${found.length} moments · ${pictures.length} images` }),
      found.length ? el("ol", { class: "moments" }, found.map((m) => el("li", {},
        el("blockquote", { text: m.text_excerpt || "" }),
        el("p", { class: "sub", text: `${(m.emotional_tones || []).join(", ")} · intensity ${Number(m.intensity_score || 0).toFixed(2)}` })))) : null,
      pictures.length ? gallery : null,
    ));
  }
}
