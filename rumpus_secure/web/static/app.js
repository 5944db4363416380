// rumpus-secure: progressive enhancement only. Without this file every
// form still works; with it, uploads show a progress bar.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) { return; }
  var bar = document.getElementById("upload-progress");
  var label = document.getElementById("upload-status");
  form.addEventListener("submit", function (event) {
    var input = form.querySelector("input[type=file]");
    if (!input || !input.files || input.files.length === 0) { return; }
    event.preventDefault();
    var data = new FormData();
    // The CSRF token must come first: the server checks it before any file.
    data.append("csrf", form.querySelector("input[name=csrf]").value);
    for (var i = 0; i < input.files.length; i++) {
      data.append("file", input.files[i], input.files[i].name);
    }
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    bar.classList.remove("hidden");
    bar.value = 0;
    label.textContent = "Uploading\u2026";
    form.querySelector("button[type=submit]").disabled = true;
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) {
        bar.max = e.total;
        bar.value = e.loaded;
        label.textContent = "Uploading\u2026 " + Math.floor(100 * e.loaded / e.total) + "%";
      }
    });
    xhr.addEventListener("load", function () {
      var message = "Upload finished.";
      try { message = JSON.parse(xhr.responseText).message || message; } catch (err) {}
      label.textContent = message;
      window.location.reload();
    });
    xhr.addEventListener("error", function () {
      label.textContent = "The upload failed: the connection was interrupted.";
      form.querySelector("button[type=submit]").disabled = false;
    });
    xhr.send(data);
  });
});
