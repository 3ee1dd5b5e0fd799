// Technician pages: keep the upload form's eye/field in step with the radio buttons, replace a preview that
// cannot load (no camera, service down) with a message, enlarge a photo (with its marks) in a dialog, and give
// the stacked phone tables their headings.
(function () {
  "use strict";
  document.querySelectorAll("#capture-form input[type=radio]").forEach(function (radio) {
    radio.addEventListener("change", function () {
      var target = document.getElementById("upload-" + radio.name);
      if (target && radio.checked) { target.value = radio.value; }
    });
  });
  var img = document.getElementById("preview");
  if (img) {
    img.addEventListener("error", function () {
      var p = document.createElement("p");
      p.className = "flash error"; p.id = "preview-down"; p.textContent = img.dataset.tDown;
      img.replaceWith(p);
    });
  }
  var dialog = document.getElementById("photo-dialog");
  if (dialog && typeof dialog.showModal === "function") {
    var frame = dialog.querySelector(".frame");
    document.querySelectorAll("a.enlarge").forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        // The screen-sized photo with the same marks: the SVG is in the photo's own pixels, so it fits.
        var big = document.createElement("img");
        big.src = link.dataset.full;
        big.alt = link.querySelector("img").alt;
        big.id = "photo-full";
        frame.replaceChildren(big);
        var marks = link.querySelector("svg.overlay");
        if (marks) { frame.appendChild(marks.cloneNode(true)); }
        dialog.showModal();
      });
    });
  }
  if (window.CG) {
    document.querySelectorAll("table.cards").forEach(function (t) { window.CG.labelCells(t); });
  }
}());
