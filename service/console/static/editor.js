// Policy editor: line numbers, live validation (debounced) and the impact simulation.
// Talks to the console's own JSON endpoints with the session cookie and the CSRF header.
"use strict";

(() => {
  const form = document.getElementById("editor-form");
  const text = document.getElementById("bundle-text");
  if (!form || !text) return;
  const gutter = document.getElementById("gutter");
  const list = document.getElementById("problems");
  const noProblems = document.getElementById("no-problems");
  const status = document.getElementById("editor-status");
  const simulateButton = document.getElementById("simulate-btn");
  const impact = document.getElementById("impact");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const DEBOUNCE_MS = 350;

  let errorLines = new Set();
  let sequence = 0;
  let timer = null;

  function el(tag, className, content) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function lineCount() {
    let count = 1;
    for (let i = 0; i < text.value.length; i += 1) if (text.value.charCodeAt(i) === 10) count += 1;
    return count;
  }

  function renderGutter() {
    const count = lineCount();
    const fragment = document.createDocumentFragment();
    for (let n = 1; n <= count; n += 1) {
      fragment.appendChild(el("span", errorLines.has(n) ? "err" : "", String(n)));
    }
    gutter.replaceChildren(fragment);
    gutter.scrollTop = text.scrollTop;
  }

  function jumpTo(line) {
    const lines = text.value.split("\n");
    let start = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i += 1) start += lines[i].length + 1;
    const end = start + (lines[line - 1] || "").length;
    text.focus();
    text.setSelectionRange(start, end);
    const lineHeight = parseFloat(getComputedStyle(text).lineHeight) || 20;
    text.scrollTop = Math.max(0, (line - 1) * lineHeight - text.clientHeight / 3);
  }

  function setStatus(message, kind) {
    status.textContent = message;
    status.className = "status" + (kind ? " status-" + kind : "");
  }

  function showErrors(errors) {
    errorLines = new Set(errors.map((e) => e.line));
    const fragment = document.createDocumentFragment();
    errors.forEach((error) => {
      const item = el("li", "problem");
      const jump = el("button");
      jump.type = "button";
      jump.appendChild(el("span", "problem-line", "Line " + error.line));
      jump.addEventListener("click", () => jumpTo(error.line));
      item.appendChild(jump);
      if (error.path) {
        item.appendChild(document.createTextNode(" "));
        item.appendChild(el("code", "", error.path));
      }
      item.appendChild(document.createTextNode(" " + error.messages.join("; ")));
      fragment.appendChild(item);
    });
    list.replaceChildren(fragment);
    noProblems.hidden = errors.length > 0;
    if (errors.length) {
      setStatus(errors.length + (errors.length === 1 ? " problem" : " problems"), "bad");
    } else {
      setStatus("✓ Valid bundle", "ok");
    }
    renderGutter();
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    if (response.status === 401 || response.status === 400) {
      throw new Error("signed-out");
    }
    const data = await response.json().catch(() => null);
    if (!data || (response.status >= 500)) throw new Error("unavailable");
    return data;
  }

  async function validate() {
    const mine = ++sequence;
    setStatus("Checking…", "");
    try {
      const result = await post(form.dataset.validateUrl, { text: text.value });
      if (mine !== sequence) return; // a newer check is on its way
      showErrors(result.errors || []);
    } catch (error) {
      if (mine !== sequence) return;
      setStatus(
        error.message === "signed-out"
          ? "Signed out: reload the page to sign in again"
          : "Could not check right now",
        "bad",
      );
    }
  }

  function stat(value, label, kind) {
    const box = el("div", "stat" + (kind ? " stat-" + kind : ""));
    box.appendChild(el("span", "stat-value", value));
    box.appendChild(el("span", "stat-label", label));
    return box;
  }

  function verdictChip(verdict) {
    return el("span", "verdict verdict-" + verdict, verdict);
  }

  function renderReport(report) {
    const wrap = el("div", "impact");
    const stats = el("div", "stats");
    const changed = Object.values(report.changes).reduce((a, b) => a + b, 0);
    stats.appendChild(stat(String(report.evaluated), "devices replayed"));
    stats.appendChild(stat(String(changed), "verdicts change", changed ? "warn" : ""));
    stats.appendChild(
      stat(
        (report.allow_to_lock_ratio * 100).toFixed(1) + "%",
        "newly locked (limit " + (report.max_new_lock_ratio * 100).toFixed(1) + "%)",
        report.would_brake ? "danger" : "",
      ),
    );
    wrap.appendChild(stats);
    const entries = Object.entries(report.changes);
    if (entries.length) {
      // A list rather than a table: the side panel is narrow.
      const list = el("ul", "change-list");
      entries.forEach(([change, count]) => {
        const [before, after] = change.split("->");
        const item = el("li");
        const head = el("div", "change-head");
        head.append(verdictChip(before), " → ", verdictChip(after));
        head.appendChild(el("span", "change-count", count + (count === 1 ? " device" : " devices")));
        item.appendChild(head);
        const samples = el("div", "mono small");
        samples.append("e.g. ");
        (report.samples[change] || []).forEach((imei, i) => {
          if (i) samples.append(", ");
          if (form.dataset.deviceUrl) {
            const link = el("a", "", imei);
            link.href = form.dataset.deviceUrl.replace("IMEI", encodeURIComponent(imei));
            samples.appendChild(link);
          } else {
            samples.append(imei);
          }
        });
        item.appendChild(samples);
        list.appendChild(item);
      });
      wrap.appendChild(list);
    } else if (report.evaluated) {
      wrap.appendChild(el("p", "notice notice-success", "No recorded device changes verdict."));
    } else {
      wrap.appendChild(el("p", "empty", "No device has checked in yet: nothing to replay."));
    }
    if (report.would_brake) {
      wrap.appendChild(
        el(
          "p",
          "notice notice-error",
          "Safety brake: publishing this would be refused unless you choose to publish anyway.",
        ),
      );
    }
    impact.replaceChildren(wrap);
  }

  async function simulate() {
    simulateButton.disabled = true;
    impact.replaceChildren(el("p", "muted small", "Replaying recorded check-ins…"));
    try {
      const result = await post(form.dataset.simulateUrl, { text: text.value });
      if (result.report) {
        renderReport(result.report);
      } else {
        showErrors(result.errors || []);
        impact.replaceChildren(el("p", "error", "Fix the problems first: only a valid bundle can be simulated."));
      }
    } catch (error) {
      impact.replaceChildren(el("p", "error", "The simulation could not run right now; try again."));
    } finally {
      simulateButton.disabled = false;
    }
  }

  text.addEventListener("input", () => {
    renderGutter();
    window.clearTimeout(timer);
    timer = window.setTimeout(validate, DEBOUNCE_MS);
  });
  text.addEventListener("scroll", () => {
    gutter.scrollTop = text.scrollTop;
  });
  simulateButton.addEventListener("click", simulate);

  const initial = JSON.parse(document.getElementById("initial-errors").textContent || "[]");
  showErrors(initial);
  if (!initial.length) validate();
})();
