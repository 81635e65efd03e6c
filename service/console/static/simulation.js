// regionlock console: a simulation job's progress bar, polled until the job ends (SPEC §12.5).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const card = document.querySelector("[data-simulation-poll]");
  if (!card) return;
  const url = card.dataset.simulationPoll;
  const bar = card.querySelector("[data-job-progress]");
  const count = card.querySelector("[data-job-count]");
  const state = card.querySelector("[data-job-state]");
  const running = (name) => name === "queued" || name === "running";
  if (!running(card.dataset.state)) return;
  const format = (n) => Number(n).toLocaleString("en");

  const poll = async () => {
    let job;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(String(response.status));
      job = await response.json();
    } catch (error) {
      window.setTimeout(poll, 2000); // the service is away for a moment: try again
      return;
    }
    const progress = job.progress || {};
    if (progress.total) bar.max = progress.total;
    bar.value = progress.evaluated || 0;
    bar.textContent = String(progress.evaluated || 0);
    count.textContent = `${format(progress.evaluated || 0)} of ${
      progress.total == null ? "…" : format(progress.total)
    } devices`;
    state.textContent = job.state;
    if (running(job.state)) {
      window.setTimeout(poll, 700);
    } else {
      window.location.reload(); // the report is rendered by the server
    }
  };
  window.setTimeout(poll, 700);
});
