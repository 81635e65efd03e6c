// regionlock console: small progressive enhancements; every page works without this file.
"use strict";

document.addEventListener("submit", (event) => {
  // One click, one action: a double click must not send an unlock or a publish twice.
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") return;
  window.setTimeout(() => {
    form.querySelectorAll("button[type=submit]").forEach((button) => {
      button.disabled = true;
    });
  }, 0);
});

window.addEventListener("pageshow", (event) => {
  // Coming back with the browser's Back button restores the page from cache: re-enable it.
  if (event.persisted) {
    document.querySelectorAll("button[type=submit][disabled]").forEach((button) => {
      button.disabled = false;
    });
  }
});
