// The page's entry point: the token prompt, then the page the path names.
import { onAuthRequired, setToken, token } from "./api.js";
import { say } from "./dom.js";
import { showDashboard } from "./dashboard.js";
import { showManuscript } from "./manuscript.js";
import { showSession } from "./session.js";

const UUID = "[0-9a-fA-F-]{36}";
const PAGES = [
  [new RegExp(`^/ui/sessions/(${UUID})$`), showSession],
  [new RegExp(`^/ui/manuscripts/(${UUID})$`), showManuscript],
  [/^\/$/, showDashboard],
];

function setUpToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const forget = document.getElementById("token-forget");
  const message = document.getElementById("auth-message");
  const refresh = () => {
    forget.hidden = !token();
  };
  onAuthRequired(() => {
    form.hidden = false;
    say(message, token() ? "The server refused this token; enter another." : "This server needs an API token.", "error");
    input.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    input.value = "";
    form.hidden = true;
    say(message, "");
    location.reload();
  });
  forget.addEventListener("click", () => {
    setToken("");
    location.reload();
  });
  refresh();
}

setUpToken();
const main = document.getElementById("main");
for (const [pattern, show] of PAGES) {
  const match = location.pathname.match(pattern);
  if (match) {
    show(main, match[1]);
    break;
  }
}
