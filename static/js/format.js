/* Loomview's one duration format, for scripts: the same text as the
 * `duration_ns` template filter (dashboard/templatetags/runs_format.py), so a
 * timeline tick and a table cell say `4m 04s` and `1.2 s` alike. A browser
 * test compares the two on a table of values. */
(function () {
  "use strict";

  function pad2(n) {
    return (n < 10 ? "0" : "") + n;
  }

  // ms: a duration in milliseconds (the timeline's unit).
  function duration(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return "—";
    if (ms < 10) return ms.toFixed(1) + " ms";
    if (ms < 1000) return ms.toFixed(0) + " ms";
    const seconds = ms / 1000;
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const whole = Math.floor(seconds);
    const minutes = Math.floor(whole / 60);
    if (minutes < 60) return minutes + "m " + pad2(whole % 60) + "s";
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return hours + "h " + pad2(minutes % 60) + "m";
    return Math.floor(hours / 24) + "d " + (hours % 24) + "h";
  }

  window.loomviewFormat = { duration: duration };
})();
