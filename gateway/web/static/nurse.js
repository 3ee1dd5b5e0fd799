// The nurse's visit sheet: the Print button (inline handlers are not allowed by the pages' CSP).
(function () {
  "use strict";
  document.querySelectorAll("[data-print]").forEach(function (button) {
    button.addEventListener("click", function () { window.print(); });
  });
}());
