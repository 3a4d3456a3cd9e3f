/* durajobs dashboard: the only script besides htmx. No business logic: it pauses the live
   regions (elements with data-live, polled by htmx) while the tab is hidden, while the operator
   is selecting rows, reading an open <details> or typing, and when the Live toggle is off. */
(function () {
  "use strict";
  var KEY = "durajobs.live";
  var fallback = "on";

  function live() {
    try { return (window.localStorage.getItem(KEY) || "on") === "on"; } catch (e) { return fallback === "on"; }
  }

  function remember(value) {
    fallback = value;
    try { window.localStorage.setItem(KEY, value); } catch (e) { /* private mode: per page */ }
  }

  function busy(region) {
    var active = document.activeElement;
    return region.querySelector("input:checked, details[open]") !== null ||
      (active !== null && region.contains(active) && active.matches("input, select, textarea"));
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var region = event.detail.elt;
    if (!region.hasAttribute("data-live")) { return; }
    if (document.visibilityState !== "visible" || !live() || busy(region)) {
      event.preventDefault();
    }
  });

  function show(button) {
    var on = live();
    button.setAttribute("aria-pressed", on ? "true" : "false");
    button.textContent = on ? "Live: on" : "Live: off";
  }

  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("live-toggle");
    if (button === null) { return; }
    button.hidden = false;
    show(button);
    button.addEventListener("click", function () {
      remember(live() ? "off" : "on");
      show(button);
    });
  });
}());
