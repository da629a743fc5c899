// The live page: polls /live.json every 2 s and draws it. Data goes in through textContent
// and SVG attributes only, never as markup.
"use strict";

(function () {
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 360, H = 110, PAD_L = 44, PAD_R = 6, PAD_T = 8, PAD_B = 16;

  const byId = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function clock(t) {
    if (t === null || t === undefined) return "—";
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  }

  function when(t) {
    if (t === null || t === undefined) return "—";
    const d = new Date(t * 1000);
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + clock(t);
  }

  function duration(s) {
    if (s === null || s === undefined) return "";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 90) return s.toFixed(1) + " s";
    if (s < 5400) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function size(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function number(v) {
    if (v === null || v === undefined) return "unknown";
    const a = Math.abs(v);
    if (a !== 0 && (a < 0.001 || a >= 1e6)) return v.toExponential(2);
    return String(Math.round(v * 1000) / 1000);
  }

  // -- the state ------------------------------------------------------------------------------

  function renderState(d) {
    const head = byId("state");
    head.className = "state " + d.level;
    byId("headline").textContent = d.headline;
    byId("status-line").textContent = d.status_line;
    const bits = [d.app, "mode " + d.mode];
    if (d.paused) bits.push("PAUSED");
    if (d.watch_until) bits.push("watching until " + clock(d.watch_until));
    bits.push("rollbackd " + d.version, "updated " + clock(d.now));
    for (const p of d.problems) bits.push("problem: " + p);
    byId("meta").textContent = bits.join(" · ");
    document.title = (d.level === "incident" ? "⚠ " : "") + "rollbackd · " + d.app;
  }

  // -- the incident's timeline ----------------------------------------------------------------

  function describe(e) {
    switch (e.kind) {
      case "decision":
        return ["decision: " + e.decision,
                e.scenario + " (" + e.severity + ") → " + e.action + ", mode " + e.mode +
                ": " + e.reason];
      case "run":
        return ["runbook " + e.runbook + " started (run " + e.run + ")",
                "by " + e.by + "; plan: " + e.plan.join(", ") + "; deadline " + clock(e.deadline)];
      case "step":
        return ["step " + (e.step + 1) + " " + e.name + (e.attempt > 1 ? " (try " + e.attempt + ")" : ""),
                (e.outcome || "") + " in " + duration(e.duration) + (e.message ? ": " + e.message : "")];
      case "run_end":
        return ["runbook " + e.runbook + " " + e.status + " after " + duration(e.duration),
                e.summary || ""];
      case "page":
        return ["page L" + e.level + " " + e.template + (e.event !== "trigger" ? " (" + e.event + ")" : ""),
                (e.title || "") + " — to " + (e.recipient || "on-call") + ", " + e.status +
                (e.delivered_by ? " by " + e.delivered_by + " at " + clock(e.delivered_at) : "")];
      case "ack":
        return ["acknowledged by " + e.by,
                "via " + e.via + (e.comment ? ": " + e.comment : "")];
      default:
        return [e.kind, ""];
    }
  }

  function renderIncident(d) {
    const inc = d.incident;
    const list = byId("timeline");
    if (!inc) {
      byId("incident-title").textContent = "No incident so far";
      byId("incident-summary").textContent = "Nothing has fired since this journal began.";
      list.replaceChildren();
      return;
    }
    const open = inc.state === "open";
    byId("incident-title").textContent =
      "Incident " + inc.incident + (open ? " — open" : " — resolved (the latest)");
    byId("incident-summary").textContent =
      inc.scenario + " (" + inc.severity + "), " + inc.action + ", mode " + inc.mode +
      "; opened " + when(inc.opened_at) + ", last change " + when(inc.updated_at) +
      ": " + inc.reason;
    const items = inc.timeline.map((e) => {
      const [what, detail] = describe(e);
      const li = el("li", e.kind);
      li.append(el("span", "when", clock(e.t)), el("span", "what", what));
      const outcome = e.outcome || e.status;
      const bad = ["failed", "interrupted", "refused", "timeout"].includes(outcome);
      li.append(el("span", bad ? "bad" : "", detail));
      return li;
    });
    list.replaceChildren(...items);
  }

  // -- the charts -----------------------------------------------------------------------------

  function chart(sig, d) {
    const box = el("div", "chart");
    const title = el("h3", "", sig.name);
    title.append(el("span", "now", number(sig.value)));
    box.append(title);
    const t1 = d.now, t0 = d.now - d.window;
    const values = sig.points.map((p) => p[1]).filter((v) => v !== null);
    const lines = sig.thresholds.map((t) => t.value);
    let lo = Math.min(0, ...values, ...lines), hi = Math.max(...values, ...lines, lo + 1e-9);
    if (hi === lo) hi = lo + 1;
    hi += (hi - lo) * 0.08;
    const x = (t) => PAD_L + ((t - t0) / (t1 - t0)) * (W - PAD_L - PAD_R);
    const y = (v) => PAD_T + (1 - (v - lo) / (hi - lo)) * (H - PAD_T - PAD_B);
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img",
                              "aria-label": sig.name + " over the last hour" });
    root.append(svg("rect", { x: PAD_L, y: PAD_T, width: W - PAD_L - PAD_R,
                              height: H - PAD_T - PAD_B, fill: "#121519", stroke: "#333" }));
    root.append(svg("text", { x: PAD_L - 4, y: PAD_T + 9, "text-anchor": "end",
                              "font-size": 10, fill: "#9aa0a6" }, number(hi)));
    root.append(svg("text", { x: PAD_L - 4, y: H - PAD_B, "text-anchor": "end",
                              "font-size": 10, fill: "#9aa0a6" }, number(lo)));
    root.append(svg("text", { x: PAD_L, y: H - 3, "font-size": 10, fill: "#9aa0a6" }, "-60 min"));
    root.append(svg("text", { x: W - PAD_R, y: H - 3, "font-size": 10, fill: "#9aa0a6",
                              "text-anchor": "end" }, "now"));
    // One path, broken where the signal was unknown.
    let path = "", pen = false;
    for (const [t, v] of sig.points) {
      if (v === null) { pen = false; continue; }
      path += (pen ? "L" : "M") + x(t).toFixed(1) + " " + y(v).toFixed(1) + " ";
      pen = true;
    }
    if (path) root.append(svg("path", { d: path, fill: "none", stroke: "#e6e6e6",
                                        "stroke-width": 1.5 }));
    // The latest reading as a dot: a line only minutes old is a sliver at the right edge.
    const known = sig.points.filter((p) => p[1] !== null);
    if (known.length) {
      const [lt, lv] = known[known.length - 1];
      root.append(svg("circle", { cx: x(lt).toFixed(1), cy: y(lv).toFixed(1), r: 3,
                                  fill: "#e6e6e6" }));
    }
    for (const th of sig.thresholds) {
      const ty = y(th.value);
      root.append(svg("line", { x1: PAD_L, x2: W - PAD_R, y1: ty, y2: ty, stroke: "#ff5252",
                                "stroke-dasharray": "5 3", "stroke-width": 1.2 }));
      root.append(svg("text", { x: W - PAD_R - 2, y: ty - 3, "text-anchor": "end",
                                "font-size": 10, fill: "#ff8a80" },
                      th.rule + ": " + th.subject + " " + th.op + " " + number(th.value)));
    }
    if (d.deploy && d.deploy.started_at >= t0) {
      const dx = x(d.deploy.started_at);
      root.append(svg("line", { x1: dx, x2: dx, y1: PAD_T, y2: H - PAD_B, stroke: "#4fc3f7",
                                "stroke-width": 1.5 }));
      // Labelled on the side with room: a recent deploy sits at the right edge.
      const right = dx > (PAD_L + W - PAD_R) / 2;
      root.append(svg("text", { x: right ? dx - 3 : dx + 3, y: PAD_T + 10, "font-size": 10,
                                "text-anchor": right ? "end" : "start", fill: "#4fc3f7" },
                      "deploy " + d.deploy.version));
    }
    box.append(root);
    box.append(el("div", "muted", "rules: " + sig.rules.join(", ")));
    return box;
  }

  function renderSignals(d) {
    const charts = d.signals.map((s) => chart(s, d));
    if (!charts.length) charts.push(el("p", "muted", "The policy's rules read no signal."));
    byId("charts").replaceChildren(...charts);
  }

  // -- data safety ----------------------------------------------------------------------------

  function renderSafety(d) {
    const drill = d.drill;
    const line = byId("drill");
    if (!drill) {
      line.textContent = "No restore drill recorded yet.";
      line.className = "bad";
    } else {
      line.textContent = "Last drill " + when(drill.t) + ": " + (drill.ok ? "OK" : "FAILED") +
        " in " + duration(drill.duration) + " (backup " + drill.backup + ")";
      line.className = drill.ok ? "good" : "bad";
    }
    const rows = d.restore_points.map((b) => {
      const tr = el("tr");
      tr.append(el("td", "", b.id), el("td", "", b.kind), el("td", "", when(b.created_at)),
                el("td", b.state === "verified" ? "good" : "bad", b.state),
                el("td", "", size(b.size)), el("td", "", b.version || ""));
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "muted", "No backups found (the list is read every 30 s).");
      td.colSpan = 6;
      tr.append(td);
      rows.push(tr);
    }
    byId("restore-points").tBodies[0].replaceChildren(...rows);
  }

  // -- the fleet (fleet mode only) ------------------------------------------------------------

  function renderFleet(d) {
    const f = d.fleet;
    byId("fleet-section").hidden = !f;
    if (!f) return;
    byId("fleet-title").textContent = "Fleet " + f.name + " (this host: " + f.host + ")";
    const summary = byId("fleet-summary");
    const i = f.incident;
    if (f.problem) {
      summary.textContent = "Cannot read the fleet: " + f.problem;
      summary.className = "bad";
    } else if (i) {
      summary.textContent = "Fleet incident " + i.id + ": " + i.scenario + " → " + i.action +
        ", opened by " + i.opened_by + "; database " + i.db_state +
        (i.db_host ? " by " + i.db_host : "") + (i.note ? " (" + i.note + ")" : "");
      summary.className = i.db_state === "failed" ? "bad" : "";
    } else {
      summary.textContent = "No fleet incident open.";
      summary.className = "muted";
    }
    const rows = f.hosts.map((h) => {
      const tr = el("tr");
      tr.append(el("td", "", h.host), el("td", h.part === "failed" ? "bad" : "", h.doing),
                el("td", h.alive ? "" : "bad",
                   duration(h.beat_ago) + " ago" + (h.alive ? "" : " (silent)")));
      return tr;
    });
    byId("fleet-hosts").tBodies[0].replaceChildren(...rows);
  }

  // -- polling --------------------------------------------------------------------------------

  let lastOk = 0;

  async function poll() {
    try {
      const response = await fetch("/live.json", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const d = await response.json();
      renderState(d);
      renderIncident(d);
      renderSignals(d);
      renderSafety(d);
      renderFleet(d);
      lastOk = Date.now();
    } catch (err) {
      byId("state").classList.add("stale");  // keep the level's colour: it was true
      byId("meta").textContent = "Cannot reach rollbackd (" + err.message + ")" +
        (lastOk ? "; last update " + new Date(lastOk).toLocaleTimeString([], { hour12: false }) : "");
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
