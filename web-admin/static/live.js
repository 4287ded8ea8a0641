// Live room view: applies Server-Sent Events from /rooms/{name}/events to the table.
(function () {
  "use strict";
  var table = document.getElementById("participants");
  if (!table || !window.EventSource) { return; }
  var room = table.getAttribute("data-room");
  var csrf = table.getAttribute("data-csrf");
  var tbody = table.querySelector("tbody");
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function form(action, label, cls, muted) {
    var f = el("form", "inline");
    f.method = "post";
    f.action = "/rooms/" + encodeURIComponent(room) + "/participants/" + encodeURIComponent(action.id) + "/" + action.verb;
    var c = el("input"); c.type = "hidden"; c.name = "csrf"; c.value = csrf; f.appendChild(c);
    if (muted !== undefined) { var m = el("input"); m.type = "hidden"; m.name = "muted"; m.value = muted; f.appendChild(m); }
    var b = el("button", cls, label); b.type = "submit"; f.appendChild(b);
    return f;
  }
  function row(p) {
    var tr = el("tr"); tr.id = "p-" + p.id; tr.setAttribute("data-id", p.id);
    tr.appendChild(el("td", "", p.from));
    tr.appendChild(el("td", "codec", p.codec));
    var t = el("td", "talking-cell"); if (p.talking) { t.appendChild(el("span", "talking", "talking")); } tr.appendChild(t);
    var lv = el("td", "level"); var m = el("meter"); m.min = 0; m.max = 100; m.value = p.level; lv.appendChild(m); lv.appendChild(el("span", "lv", " " + p.level)); tr.appendChild(lv);
    tr.appendChild(el("td", "loss", p.loss_pct.toFixed(1)));
    tr.appendChild(el("td", "jitter", p.jitter_ms.toFixed(1)));
    var act = el("td");
    act.appendChild(form({ id: p.id, verb: "mute" }, p.muted ? "Unmute" : "Mute", "mute", p.muted ? "false" : "true"));
    act.appendChild(form({ id: p.id, verb: "kick" }, "Kick", "kick"));
    tr.appendChild(act);
    return tr;
  }
  function put(p) {
    var old = document.getElementById("p-" + p.id);
    var tr = row(p);
    if (old) { tbody.replaceChild(tr, old); } else { tbody.appendChild(tr); }
  }
  var es = new EventSource("/rooms/" + encodeURIComponent(room) + "/events");
  es.addEventListener("join", function (e) { put(JSON.parse(e.data)); });
  es.addEventListener("update", function (e) { put(JSON.parse(e.data)); });
  es.addEventListener("leave", function (e) {
    var old = document.getElementById("p-" + JSON.parse(e.data).id);
    if (old) { old.parentNode.removeChild(old); }
  });
  es.addEventListener("gone", function () { es.close(); });
}());
