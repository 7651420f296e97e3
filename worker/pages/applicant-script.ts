/**
 * The status page's script, served as `/assets/applicant.js`: creates and revokes personal access
 * tokens through the JSON API with the page's status capability (taken from the page address, as
 * the server took it), and shows a new token's secret once. Plain ES2020, shipped as written.
 */
export const APPLICANT_SCRIPT = `"use strict";
(function () {
  var capability = new URLSearchParams(window.location.search).get("token") || "";
  var form = document.getElementById("mint-token");
  if (!form) return;
  var applicationId = form.getAttribute("data-application");
  var endpoint = "/v1/applications/" + encodeURIComponent(applicationId) + "/tokens";
  var status = document.getElementById("mint-status");
  function headers(json) {
    var h = { authorization: "Bearer " + capability, accept: "application/json" };
    if (json) h["content-type"] = "application/json";
    return h;
  }
  function problemText(problem, code) {
    if (!problem) return "The request failed (" + code + ").";
    var text = problem.detail || problem.title || "The request failed.";
    if (problem.errors && problem.errors.length) text += " " + problem.errors.map(function (e) { return e.field + ": " + e.message; }).join("; ");
    return text;
  }
  function cell(text, code) {
    var td = document.createElement("td");
    if (code) { var c = document.createElement("code"); c.textContent = text; td.appendChild(c); } else td.textContent = text;
    return td;
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var scopes = Array.prototype.slice.call(form.querySelectorAll("input[name=scopes]:checked")).map(function (i) { return i.value; });
    var body = { name: form.elements.name.value, scopes: scopes };
    if (form.elements.expiresInDays.value) body.expiresInDays = Number(form.elements.expiresInDays.value);
    status.textContent = "Creating…";
    status.className = "";
    fetch(endpoint, { method: "POST", headers: headers(true), body: JSON.stringify(body) })
      .then(function (res) {
        return res.json().catch(function () { return null; }).then(function (data) {
          if (!res.ok) throw new Error(problemText(data, res.status));
          return data;
        });
      })
      .then(function (token) {
        status.textContent = "Token created.";
        document.getElementById("new-token-value").textContent = token.token;
        document.getElementById("new-token-hf").textContent = "hf_" + token.token;
        var box = document.getElementById("new-token");
        box.hidden = false;
        box.focus();
        var empty = document.getElementById("no-tokens");
        if (empty) empty.remove();
        var row = document.createElement("tr");
        row.setAttribute("data-token-row", token.id);
        row.appendChild(cell(token.name));
        row.appendChild(cell(token.prefix + "…", true));
        row.appendChild(cell(token.scopes.join(", ")));
        row.appendChild(cell(token.expiresAt ? token.expiresAt.slice(0, 10) : "never"));
        row.appendChild(cell("New"));
        document.querySelector("#token-list tbody").prepend(row);
        form.reset();
      })
      .catch(function (error) {
        status.textContent = error.message;
        status.className = "field-error";
      });
  });
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-revoke-token]");
    if (!button) return;
    var name = button.getAttribute("data-token-name");
    if (!window.confirm("Revoke the token \\u201c" + name + "\\u201d? Anything using it stops working at once.")) return;
    button.disabled = true;
    fetch(endpoint + "/" + encodeURIComponent(button.getAttribute("data-revoke-token")), { method: "DELETE", headers: headers(false) })
      .then(function (res) {
        if (!res.ok) throw new Error("Could not revoke (" + res.status + ").");
        var span = document.createElement("span");
        span.textContent = "Revoked";
        button.replaceWith(span);
      })
      .catch(function (error) {
        button.disabled = false;
        status.textContent = error.message;
        status.className = "field-error";
      });
  });
})();
`;
