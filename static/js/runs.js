/* Loomview runs list: the filter form's htmx behaviour, in a static script
 * because the Content-Security-Policy allows no inline handlers (hx-on). */
(function () {
  "use strict";

  // Typing that leaves the filters as they are sends nothing.
  document.addEventListener("htmx:configRequest", function (event) {
    if (!(event.target instanceof Element) || event.target.id !== "run-filters") return;
    const query = "?" + new URLSearchParams(event.detail.formData);
    if (query === window.location.search) event.preventDefault();
  });

  // A bad filter value is a form error (400): show it like any answer.
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (!(event.target instanceof Element)) return;
    const source = event.detail.requestConfig && event.detail.requestConfig.elt;
    if (!source || !source.closest("#run-filters")) return;
    if (event.detail.xhr.status === 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // "Clear" empties the form once the unfiltered list has loaded.
  document.addEventListener("htmx:afterRequest", function (event) {
    const source = event.detail.requestConfig && event.detail.requestConfig.elt;
    if (!source || !source.matches("[data-clear-filters]")) return;
    const form = document.getElementById("run-filters");
    if (form) form.reset();
  });
})();
