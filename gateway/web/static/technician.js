// Technician page: keep the upload form's eye/field in step with the radio buttons, and replace a
// preview that cannot load (no camera, service down) with a message.
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
}());
