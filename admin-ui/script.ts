/**
 * The console's only script, served as `/admin/assets/console.js`: pages work as plain HTML, and
 * this turns forms marked `data-api` into same-origin JSON calls to `/admin/api/…` (the admin API
 * takes JSON only, and a JSON `fetch` from our own origin is what `refuseCrossSite()` admits),
 * asks for confirmation where a form says so (`data-confirm`), shows a field of the answer where
 * it names one (`data-success-field`), and adds a few keys to move through the queue.
 * Plain ES2020 without a build step: it is shipped as written.
 */
export const CONSOLE_SCRIPT = `"use strict";
(function () {
  function fieldsOf(form) {
    var body = {};
    for (var i = 0; i < form.elements.length; i++) {
      var el = form.elements[i];
      if (!el.name || el.disabled) continue;
      if (el.type === "checkbox") body[el.name] = el.checked;
      else if (el.type === "radio") { if (el.checked) body[el.name] = el.value; }
      else if (el.type === "number") body[el.name] = el.value === "" ? null : Number(el.value);
      else if (el.tagName !== "BUTTON") body[el.name] = el.value;
    }
    return body;
  }
  function say(form, text, isError) {
    var out = form.querySelector("[data-form-status]");
    if (!out) return;
    out.textContent = text;
    out.className = isError ? "form-error" : "form-status";
    out.setAttribute("role", isError ? "alert" : "status");
  }
  function problemText(problem, status) {
    if (!problem || typeof problem !== "object") return "The request failed (" + status + ").";
    var text = problem.detail || problem.title || "The request failed (" + status + ").";
    if (Array.isArray(problem.errors) && problem.errors.length) {
      text += " " + problem.errors.map(function (e) { return e.field + ": " + e.message; }).join("; ");
    }
    return text;
  }
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    event.preventDefault();
    var body = fieldsOf(form);
    var confirmText = form.dataset.confirm;
    if (confirmText && !window.confirm(confirmText)) return;
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    say(form, "Saving…", false);
    fetch(form.dataset.api, {
      method: form.dataset.method || "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify(body),
    })
      .then(function (res) {
        return res.json().catch(function () { return null; }).then(function (data) {
          if (!res.ok) throw new Error(problemText(data, res.status));
          var field = form.dataset.successField;
          say(form, field && data && data[field] ? String(data[field]) : form.dataset.success || "Saved.", false);
          var next = form.dataset.done;
          if (next) window.location.assign(next === "reload" ? window.location.href : next);
        });
      })
      .catch(function (error) {
        say(form, error.message, true);
        buttons.forEach(function (b) { b.disabled = b.hasAttribute("data-keep-disabled"); });
      });
  });
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT" || target.isContentEditable);
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "/") {
      var search = document.querySelector("[data-search]");
      if (search) { event.preventDefault(); search.focus(); }
      return;
    }
    if (event.key !== "j" && event.key !== "k") return;
    var links = Array.prototype.slice.call(document.querySelectorAll("[data-row-link]"));
    if (!links.length) return;
    var at = links.indexOf(document.activeElement);
    var next = event.key === "j" ? Math.min(links.length - 1, at + 1) : Math.max(0, at < 0 ? 0 : at - 1);
    event.preventDefault();
    links[next].focus();
  });
})();
`;
