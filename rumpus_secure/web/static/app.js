// rumpus-secure: progressive enhancement only. Without this file every form
// still works (and a taken name is refused). With it: dialogs for new folder,
// rename and delete; a drop zone for files and folders; several uploads at
// once with progress, speed, time left and cancel; a question before any
// file is replaced; a filter box; previews; a row menu on phones.
"use strict";
(function () {
  document.documentElement.classList.add("js");
  var PARALLEL = 3;

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function csrf() { var i = $("input[name=csrf]"); return i ? i.value : ""; }
  function here() { var d = $("#bulk input[name=dir]") || $("#mkdir-form input[name=dir]"); return d ? d.value : null; }
  function join(dir, name) { return dir.replace(/\/$/, "") + "/" + name; }
  function notify(kind, text) {
    var p = el("p", {"class": "flash " + kind, role: kind === "error" ? "alert" : "status"}, text);
    $("#notes").appendChild(p);
  }

  function post(url, fields) {
    var body = new URLSearchParams();
    fields.forEach(function (f) { body.append(f[0], f[1]); });
    return fetch(url, {method: "POST", body: body, credentials: "same-origin",
                       headers: {"Accept": "application/json", "X-CSRF-Token": csrf()}})
      .then(function (r) {
        return r.json().catch(function () { return {message: "The server answered " + r.status + "."}; })
          .then(function (data) { data.status = r.status; return data; });
      }, function () { return {status: 0, message: "The server could not be reached."}; });
  }

  // -- dialogs ---------------------------------------------------------------
  // dialog({title, text, html node, input: {label, value}, buttons: [[value, label, css]]})
  // resolves with {value, input} (value null when dismissed).
  var dialogCount = 0;
  function dialog(opts) {
    return new Promise(function (resolve) {
      var id = "dlg" + (++dialogCount);
      var d = el("dialog", {"aria-labelledby": id + "t"});
      if (opts.css) { d.className = opts.css; }
      var form = el("form", {method: "dialog"});
      form.appendChild(el("h2", {id: id + "t"}, opts.title));
      var msg = el("div", {"class": "msg", id: id + "m"});
      if (opts.text) { msg.appendChild(el("p", {}, opts.text)); }
      if (opts.node) { msg.appendChild(opts.node); }
      form.appendChild(msg);
      var input = null;
      if (opts.input) {
        var label = el("label", {}, opts.input.label + " ");
        input = el("input", {type: "text", autocomplete: "off", required: ""});
        input.value = opts.input.value || "";
        label.appendChild(input);
        form.appendChild(label);
      }
      if (opts.check) {
        var cl = el("label", {});
        var cb = el("input", {type: "checkbox", name: "all"});
        cl.appendChild(cb); cl.appendChild(document.createTextNode(" " + opts.check));
        form.appendChild(cl);
      }
      var row = el("div", {"class": "buttons"});
      opts.buttons.forEach(function (b) {
        var button = el("button", {type: "submit", value: b[0]}, b[1]);
        if (b[2]) { button.className = b[2]; }
        if (b[0] === "") { button.setAttribute("formnovalidate", ""); }
        row.appendChild(button);
      });
      form.appendChild(row);
      d.appendChild(form);
      if (!opts.input) { d.setAttribute("aria-describedby", id + "m"); }
      document.body.appendChild(d);
      d.addEventListener("close", function () {
        var value = d.returnValue || null;
        resolve({value: value, input: input ? input.value.trim() : null,
                 all: opts.check ? form.querySelector("input[name=all]").checked : false});
        d.remove();
      });
      d.showModal();
      if (input) {
        input.focus();
        var dot = input.value.lastIndexOf(".");
        input.setSelectionRange(0, dot > 0 ? dot : input.value.length);
      } else if (opts.focus) {
        var f = row.querySelector("button[value='" + opts.focus + "']"); if (f) { f.focus(); }
      }
    });
  }
  function alertDialog(title, text) { return dialog({title: title, text: text, buttons: [["ok", "OK"]]}); }

  // -- the listing, refreshed in place --------------------------------------
  function refresh() {
    return fetch(location.href, {credentials: "same-origin"}).then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = $("table.files tbody", doc), old = $("table.files tbody");
        if (fresh && old) { old.replaceWith(fresh); names = null; applyFilter(); addMenus(); }
      });
  }
  var names = null;
  function listedNames() {
    if (!names) { names = {}; $$("table.files tbody td.pick input").forEach(function (i) { names[i.value] = true; }); }
    return names;
  }

  // -- rename, delete, new folder -------------------------------------------
  function pathOf(a) { return new URL(a.href).searchParams.get("path"); }
  function rowName(a) { return pathOf(a).split("/").pop(); }

  function renameFlow(path, current) {
    return dialog({title: "Rename " + current, input: {label: "New name", value: current},
                   buttons: [["", "Cancel", "plain"], ["ok", "Rename"]]})
      .then(function (r) {
        if (r.value !== "ok" || !r.input || r.input === current) { return; }
        return sendRename(path, r.input, false);
      });
  }
  function sendRename(path, name, replace) {
    var fields = [["path", path], ["name", name]];
    if (replace) { fields.push(["replace", "1"]); }
    return post("/rename", fields).then(function (data) {
      if (data.ok) { notify("ok", data.message); return refresh(); }
      if (data.conflict && data.may_replace) {
        return dialog({title: "Replace " + name + "?", text: name + " already exists here. If you replace it, the file now called " + name + " is lost.",
                       buttons: [["", "Cancel", "plain"], ["replace", "Replace", "danger"]], focus: ""})
          .then(function (r) { if (r.value === "replace") { return sendRename(path, name, true); } });
      }
      return alertDialog("Not renamed", data.message);
    });
  }
  function deleteFlow(dir, list) {
    var node = null, text;
    if (list.length === 1) { text = "Delete " + list[0] + "? A folder is deleted with everything in it. This cannot be undone."; }
    else {
      text = "Delete these " + list.length + " entries? Folders are deleted with everything in them. This cannot be undone.";
      node = el("ul", {"class": "names"});
      list.forEach(function (n) { node.appendChild(el("li", {}, n)); });
    }
    return dialog({title: list.length === 1 ? "Delete " + list[0] + "?" : "Delete " + list.length + " entries?",
                   text: text, node: node, buttons: [["", "Cancel", "plain"], ["delete", "Delete", "danger"]], focus: "delete"})
      .then(function (r) {
        if (r.value !== "delete") { return; }
        var fields = [["dir", dir]];
        list.forEach(function (n) { fields.push(["name", n]); });
        return post("/delete", fields).then(function (data) {
          notify(data.ok ? "ok" : "error", data.message);
          return refresh();
        });
      });
  }

  document.addEventListener("click", function (event) {
    var a = event.target.closest("a[data-act]");
    if (a && here() !== null) {
      event.preventDefault();
      var name = rowName(a);
      if (a.dataset.act === "rename") { renameFlow(pathOf(a), name); }
      else { deleteFlow(here(), [name]); }
      return;
    }
    var more = event.target.closest("button.more");
    if (more) {
      var tr = more.closest("tr"), open = !tr.classList.contains("open");
      $$("tr.open").forEach(function (t) { t.classList.remove("open"); t.querySelector(".more").setAttribute("aria-expanded", "false"); });
      if (open) { tr.classList.add("open"); more.setAttribute("aria-expanded", "true"); var first = tr.querySelector(".acts a"); if (first) { first.focus(); } }
      return;
    }
    var link = event.target.closest("tr[data-pv] td.name a");
    if (link && !event.ctrlKey && !event.metaKey && !event.shiftKey) {
      event.preventDefault();
      preview(link);
    }
  });

  function preview(link) {
    var kind = link.closest("tr").dataset.pv, name = link.textContent;
    var download = [["", "Close", "plain"], ["dl", "Download"]];
    var show = function (node) {
      return dialog({title: name, node: node, css: "preview", buttons: download}).then(function (r) {
        if (r.value === "dl") { var a = el("a", {href: link.href, download: ""}); document.body.appendChild(a); a.click(); a.remove(); }
      });
    };
    if (kind === "img") { return show(el("img", {src: link.href, alt: "Preview of " + name})); }
    return fetch(link.href, {credentials: "same-origin", headers: {"Range": "bytes=0-65535"}})
      .then(function (r) { return r.text(); })
      .then(function (text) { return show(el("pre", {tabindex: "0"}, text)); });
  }

  // -- phones: row actions behind a menu button (added here, not sent 10,000 times)
  var phone = window.matchMedia("(max-width: 40rem)");
  function addMenus() {
    if (!phone.matches) { return; }
    $$("table.files td.act").forEach(function (td) {
      if (td.querySelector(".more") || !td.querySelector(".acts a")) { return; }
      var name = td.closest("tr").querySelector("td.name").textContent;
      td.insertBefore(el("button", {type: "button", "class": "more", "aria-expanded": "false",
                                    "aria-label": "Actions for " + name}, "\u22ef"), td.firstChild);
    });
  }
  addMenus();
  if (phone.addEventListener) { phone.addEventListener("change", addMenus); }

  // -- keyboard: arrows move through the list, Delete deletes ----------------
  document.addEventListener("keydown", function (event) {
    var cell = event.target.closest && event.target.closest("table.files tbody tr");
    if (!cell || (event.target.tagName === "INPUT" && event.target.type !== "checkbox")) { return; }
    var rows = $$("table.files tbody tr:not([hidden])"), i = rows.indexOf(cell);
    var focusRow = function (r) { var a = r && (r.querySelector("td.name a") || r.querySelector("td.pick input")); if (a) { a.focus(); event.preventDefault(); } };
    if (event.key === "ArrowDown") { focusRow(rows[i + 1]); }
    else if (event.key === "ArrowUp") { focusRow(rows[i - 1]); }
    else if (event.key === "Delete") {
      var del = cell.querySelector("a[data-act=delete]");
      if (del) { event.preventDefault(); del.click(); }
    }
  });

  // -- filter ---------------------------------------------------------------
  var filter = $("#filter");
  function applyFilter() {
    if (!filter) { return; }
    var q = filter.value.trim().toLowerCase();
    $$("table.files tbody tr").forEach(function (tr) {
      var n = tr.querySelector("td.name");
      tr.hidden = q !== "" && !!n && n.textContent.toLowerCase().indexOf(q) < 0;
    });
  }
  if (filter) {
    filter.closest("label").hidden = false;
    var timer = null;
    filter.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(applyFilter, 80); });
  }

  // -- selection: select all, ZIP, delete ------------------------------------
  var bulk = $("#bulk");
  if (bulk) {
    var th = $("table.files th.pick");
    var all = el("input", {type: "checkbox", "aria-label": "Select all shown"});
    th.innerHTML = ""; th.appendChild(all);
    all.addEventListener("change", function () {
      $$("table.files tbody tr:not([hidden]) td.pick input").forEach(function (i) { i.checked = all.checked; });
    });
    bulk.addEventListener("submit", function (event) {
      var chosen = $$("table.files tbody td.pick input:checked").map(function (i) { return i.value; });
      var submitter = event.submitter;
      if (chosen.length === 0) { event.preventDefault(); alertDialog("Nothing selected", "Tick the boxes of the files and folders first."); return; }
      if (submitter && submitter.getAttribute("formaction") === "/delete") {
        event.preventDefault();
        deleteFlow(here(), chosen);
      }
    });
  }

  // -- new folder as a dialog -------------------------------------------------
  var mkdir = $("#mkdir-form");
  if (mkdir) {
    var open = el("button", {type: "button", id: "new-folder"}, "New folder\u2026");
    mkdir.hidden = true;
    var bar = $(".listbar");
    bar.insertBefore(open, bar.firstChild);
    open.addEventListener("click", function ask(prefill) {
      dialog({title: "New folder", input: {label: "Name", value: typeof prefill === "string" ? prefill : ""},
              buttons: [["", "Cancel", "plain"], ["ok", "Create"]]}).then(function (r) {
        if (r.value !== "ok" || !r.input) { return; }
        post("/mkdir", [["dir", here()], ["name", r.input]]).then(function (data) {
          if (data.ok) { notify("ok", data.message); return refresh(); }
          return alertDialog("No folder created", data.message).then(function () { ask(r.input); });
        });
      });
    });
  }

  // -- uploads ----------------------------------------------------------------
  var form = $("#upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) { return; }
  var queue = $("#queue"), fileInput = form.querySelector("input[type=file]");
  var choice = form.querySelector("select[name=exists]");
  var mayReplace = !!form.querySelector("option[value=replace]");
  $(".drop-hint", form).hidden = false;
  var folderLabel = el("label", {}, "Folder ");
  var folderInput = el("input", {type: "file", webkitdirectory: "", multiple: ""});
  folderLabel.appendChild(folderInput);
  fileInput.closest("label").after(folderLabel);

  function pick(input) {
    var items = Array.prototype.map.call(input.files, function (f) { return {file: f, rel: f.webkitRelativePath || f.name}; });
    input.value = "";
    start(items);
  }
  form.addEventListener("submit", function (event) { event.preventDefault(); pick(fileInput); });
  folderInput.addEventListener("change", function () { pick(folderInput); });
  fileInput.addEventListener("change", function () { pick(fileInput); });
  form.querySelector("button[type=submit]").hidden = true;

  // Drop files and whole folders anywhere on the page.
  var zone = document.body;
  zone.addEventListener("dragover", function (e) { if (e.dataTransfer && Array.prototype.indexOf.call(e.dataTransfer.types, "Files") >= 0) { e.preventDefault(); form.classList.add("over"); } });
  zone.addEventListener("dragleave", function (e) { if (!e.relatedTarget) { form.classList.remove("over"); } });
  zone.addEventListener("drop", function (e) {
    if (!e.dataTransfer) { return; }
    e.preventDefault();
    form.classList.remove("over");
    var entries = Array.prototype.map.call(e.dataTransfer.items || [], function (i) { return i.webkitGetAsEntry && i.webkitGetAsEntry(); })
      .filter(function (x) { return x; });
    if (entries.length === 0) {
      start(Array.prototype.map.call(e.dataTransfer.files, function (f) { return {file: f, rel: f.webkitRelativePath || f.name}; }));
      return;
    }
    Promise.all(entries.map(function (en) { return walk(en, ""); })).then(function (lists) {
      start([].concat.apply([], lists));
    });
  });
  function walk(entry, prefix) {
    if (entry.isFile) {
      return new Promise(function (ok) { entry.file(function (f) { ok([{file: f, rel: prefix + f.name}]); }, function () { ok([]); }); });
    }
    var reader = entry.createReader(), all = [];
    return new Promise(function (ok) {
      (function more() {
        reader.readEntries(function (batch) {
          if (!batch.length) {
            Promise.all(all.map(function (en) { return walk(en, prefix + entry.name + "/"); }))
              .then(function (lists) { ok([].concat.apply([{dir: prefix + entry.name}], lists)); });
            return;
          }
          all = all.concat(batch); more();
        }, function () { ok([]); });
      })();
    });
  }

  function human(n) {
    var u = ["B", "KiB", "MiB", "GiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function clock(s) { s = Math.max(0, Math.round(s)); return s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s"; }

  var pending = [], running = 0, batchPolicy = null, finished = [];
  function start(items) {
    var base = here();
    var dirs = {}, files = [];
    items.forEach(function (it) {
      var rel = it.dir !== undefined ? it.dir + "/x" : it.rel;
      var parts = rel.split("/"); parts.pop();
      for (var i = 1; i <= parts.length; i++) { dirs[parts.slice(0, i).join("/")] = true; }
      if (it.file) { files.push(it); }
    });
    if (files.length === 0 && items.length === 0) { return; }
    batchPolicy = null;
    var list = Object.keys(dirs).sort(function (a, b) { return a.split("/").length - b.split("/").length; });
    // Folders first, parents before children; one that exists is used as it is.
    list.reduce(function (p, d) {
      return p.then(function () {
        var parts = d.split("/"), name = parts.pop();
        return post("/mkdir", [["dir", join(base, parts.join("/")).replace(/\/$/, "") || "/"], ["name", name]]);
      });
    }, Promise.resolve()).then(function () {
      files.forEach(function (it) {
        var parts = it.rel.split("/"); var name = parts.pop();
        var dir = parts.length ? join(base, parts.join("/")) : base;
        pending.push(row({file: it.file, name: name, dir: dir, top: parts.length === 0, policy: null}));
      });
      pump();
    });
  }
  function row(job) {
    var li = el("li", {});
    var n = el("span", {"class": "qn", title: join(job.dir, job.name)}, job.name);
    var bar = el("progress", {max: "1", value: "0", "aria-label": "Progress of " + job.name});
    var status = el("span", {"class": "qs"}, "Waiting\u2026");
    var cancel = el("button", {type: "button", "class": "plain", "aria-label": "Cancel " + job.name}, "Cancel");
    li.appendChild(n); li.appendChild(cancel); li.appendChild(bar); li.appendChild(status);
    queue.appendChild(li);
    job.li = li; job.bar = bar; job.status = status; job.cancel = cancel;
    cancel.addEventListener("click", function () {
      job.cancelled = true;
      if (job.xhr) { job.xhr.abort(); } else { finish(job, "failed", "Cancelled."); }
    });
    return job;
  }
  function finish(job, kind, text) {
    job.done = true;
    job.li.className = kind;
    job.status.textContent = text;
    job.cancel.hidden = true;
    pending = pending.filter(function (j) { return j !== job; });
    finished.push(job);
    if (running === 0 && pending.length === 0) { refresh(); }
  }
  function pump() {
    while (running < PARALLEL && pending.some(function (j) { return !j.active && !j.done && !j.asking; })) {
      var job = pending.filter(function (j) { return !j.active && !j.done && !j.asking; })[0];
      decide(job);
    }
  }
  // Ask before any byte moves when the name is in the listing we show.
  function decide(job) {
    if (job.policy === null && preset()) { job.policy = preset(); }
    if (job.policy === null && job.top && listedNames()[job.name]) {
      if (batchPolicy) { job.policy = batchPolicy; }
      else { job.asking = true; ask(job); return; }
    }
    send(job, job.policy || choice.value);
  }
  function preset() { return choice.value !== "refuse" ? choice.value : null;
  }
  var asking = Promise.resolve();
  function ask(job) {
    asking = asking.then(function () {
      if (batchPolicy) { job.asking = false; job.policy = batchPolicy; pump(); return; }
      var buttons = [["skip", "Skip", "plain"], ["keep", "Keep both"]];
      if (mayReplace) { buttons.push(["replace", "Replace", "danger"]); }
      return dialog({title: job.name + " already exists",
                     text: "A file called " + job.name + " is already in this folder. Replace it, keep both (the new one gets a number), or skip it?",
                     check: "Do the same for the other files of this upload", buttons: buttons, focus: "keep"})
        .then(function (r) {
          job.asking = false;
          job.policy = r.value || "skip";
          if (r.all) { batchPolicy = job.policy; }
          if (job.policy === "skip") { finish(job, "done", "Skipped: the name is taken."); }
          pump();
        });
    });
  }
  function send(job, policy) {
    job.active = true; running++;
    var data = new FormData();
    // The token and the choice come first: the server reads them before any file.
    data.append("csrf", csrf());
    data.append("exists", policy);
    data.append("file", job.file, job.name);
    var xhr = job.xhr = new XMLHttpRequest();
    xhr.open("POST", "/upload?dir=" + encodeURIComponent(job.dir));
    xhr.setRequestHeader("Accept", "application/json");
    var began = Date.now();
    job.status.textContent = "Starting\u2026";
    job.bar.max = job.file.size || 1;
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) { return; }
      var secs = (Date.now() - began) / 1000, speed = secs > 0 ? e.loaded / secs : 0;
      job.bar.max = e.total; job.bar.value = e.loaded;
      job.status.textContent = Math.floor(100 * e.loaded / e.total) + "% \u00b7 " + human(speed) + "/s \u00b7 " +
        (speed > 0 ? clock((e.total - e.loaded) / speed) + " left" : "");
    });
    var end = function (kind, text) { running--; job.active = false; job.xhr = null; finish(job, kind, text); pump(); };
    xhr.addEventListener("load", function () {
      var reply = {};
      try { reply = JSON.parse(xhr.responseText); } catch (e) {}
      if (xhr.status === 409 && (reply.conflicts || []).length && !job.retried) {
        // Taken while we looked (or in a sub-folder): ask, then send again.
        running--; job.active = false; job.xhr = null; job.retried = true; job.top = true; job.policy = null;
        names = null; listedNames()[job.name] = true;
        decide(job);
        return;
      }
      if (xhr.status === 200) {
        var stored = (reply.stored || [])[0];
        job.bar.value = job.bar.max;
        end("done", (reply.skipped || []).length ? "Skipped." : stored && stored !== job.name ? "Uploaded as " + stored + "." : "Uploaded.");
      } else {
        end("failed", reply.message || "The upload failed (" + xhr.status + ").");
      }
    });
    xhr.addEventListener("error", function () { end("failed", "The connection was interrupted."); });
    xhr.addEventListener("abort", function () { end("failed", "Cancelled; nothing was stored."); });
    xhr.send(data);
  }
})();

