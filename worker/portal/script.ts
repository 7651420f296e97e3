/**
 * The portal's only script, served as `/assets/portal.js`. The pages render on the server; this
 * sends forms marked `data-api` to the same-origin JSON API (with the page's organization in
 * `x-modelgate-organization`), shows a new token's secret once and revokes tokens. Plain ES2020 without a build step: shipped as written, and
 * every text from the server is written with `textContent`, never as HTML.
 */
export const PORTAL_SCRIPT = `"use strict";
(function () {
  var portal = document.getElementById("portal");
  var organization = portal ? portal.getAttribute("data-organization") : "";
  function headers(json) {
    var h = { accept: "application/json" };
    if (json) h["content-type"] = "application/json";
    if (organization) h["x-modelgate-organization"] = organization;
    return h;
  }
  function problemText(problem, status) {
    if (!problem || typeof problem !== "object") return "The request failed (" + status + ").";
    var text = problem.detail || problem.title || "The request failed (" + status + ").";
    if (Array.isArray(problem.errors) && problem.errors.length) {
      text += " " + problem.errors.map(function (e) { return e.field + ": " + e.message; }).join("; ");
    }
    return text;
  }
  function call(method, url, body) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (data) {
        if (!res.ok) throw new Error(problemText(data, res.status));
        return data;
      });
    });
  }
  function put(body, name, value) {
    var path = name.split(".");
    var node = body;
    for (var i = 0; i < path.length - 1; i++) {
      if (typeof node[path[i]] !== "object" || node[path[i]] === null) node[path[i]] = {};
      node = node[path[i]];
    }
    node[path[path.length - 1]] = value;
  }
  function fieldsOf(form) {
    var body = {};
    var lists = {};
    for (var i = 0; i < form.elements.length; i++) {
      var el = form.elements[i];
      if (!el.name || el.disabled || el.tagName === "BUTTON" || el.tagName === "FIELDSET") continue;
      if (el.type === "checkbox" && el.hasAttribute("data-list")) {
        if (!lists[el.name]) lists[el.name] = { values: [], omitEmpty: el.hasAttribute("data-omit-empty") };
        if (el.checked) lists[el.name].values.push(el.value);
      } else if (el.type === "checkbox") put(body, el.name, el.checked);
      else if (el.type === "number") { if (el.value !== "") put(body, el.name, Number(el.value)); }
      else put(body, el.name, el.value);
    }
    Object.keys(lists).forEach(function (name) {
      if (lists[name].values.length || !lists[name].omitEmpty) put(body, name, lists[name].values);
    });
    return body;
  }
  function say(form, text, isError) {
    var out = form.querySelector("[data-form-status]");
    if (!out) return;
    out.textContent = text;
    out.className = isError ? "form-error" : "form-status";
  }
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    say(form, "Sending…", false);
    var method = form.dataset.method || "POST";
    call(method, form.dataset.api, method === "DELETE" ? undefined : fieldsOf(form))
      .then(function (data) {
        var secretField = form.dataset.secretField;
        if (secretField && data && data[secretField]) {
          document.getElementById("new-token-value").textContent = String(data[secretField]);
          var box = document.getElementById("new-token");
          box.hidden = false;
          box.focus();
          form.querySelectorAll("input[type=text]").forEach(function (i) { i.value = ""; });
          showNewToken(data);
        }
        say(form, form.dataset.success || "Done.", false);
        buttons.forEach(function (b) { b.disabled = false; });
        var next = form.dataset.done;
        if (next) window.location.assign(next === "reload" ? window.location.href : next);
      })
      .catch(function (error) {
        say(form, error.message, true);
        buttons.forEach(function (b) { b.disabled = false; });
      });
  });

  var list = document.getElementById("token-list");
  var listStatus = document.getElementById("token-list-status");
  function cell(text, code) {
    var td = document.createElement("td");
    if (code) { var c = document.createElement("code"); c.textContent = text; td.appendChild(c); }
    else td.textContent = text;
    return td;
  }
  function showNewToken(t) {
    if (!list) return;
    var empty = document.getElementById("no-tokens");
    if (empty) empty.remove();
    var row = document.createElement("tr");
    row.setAttribute("data-token-row", t.id);
    row.appendChild(cell(t.name));
    row.appendChild(cell((t.prefix || "") + "…", true));
    row.appendChild(cell((t.scopes || []).join(", ")));
    row.appendChild(cell(Array.isArray(t.models) ? t.models.join(", ") : "all of the grant"));
    row.appendChild(cell(t.member && t.member.email ? t.member.email : "you"));
    row.appendChild(cell(t.expiresAt ? String(t.expiresAt).slice(0, 10) : "never"));
    row.appendChild(cell("New"));
    list.querySelector("tbody").prepend(row);
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-revoke-token]");
    if (!button) return;
    var name = button.getAttribute("data-token-name");
    if (!window.confirm("Revoke the token \\u201c" + name + "\\u201d? Anything using it stops working at once.")) return;
    button.disabled = true;
    call("DELETE", list.getAttribute("data-endpoint") + "/" + encodeURIComponent(button.getAttribute("data-revoke-token")))
      .then(function () {
        var span = document.createElement("span");
        span.textContent = "Revoked";
        button.replaceWith(span);
        listStatus.textContent = "Token \u201c" + name + "\u201d revoked.";
        listStatus.className = "form-status";
      })
      .catch(function (error) { button.disabled = false; listStatus.textContent = error.message; listStatus.className = "form-error"; });
  });
})();
`;
