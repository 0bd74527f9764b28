(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var E = D.entries, PAGE = D.page_size;
  var KINDS = D.overlay ? ["photo", "map", "overlay"] : ["photo", "map"];
  function $(id) { return document.getElementById(id); }
  var ui = {
    cls: $("f-class"), status: $("f-status"), sort: $("f-sort"), name: $("f-name"),
    cards: $("cards"), count: $("count"), pager: $("pager"), prev: $("prev"), next: $("next"),
    pageNo: $("page-no"), empty: $("empty"), failedSection: $("failed-section"),
    failed: $("failed-list"), failedCount: $("failed-count"), failedMore: $("failed-more")
  };
  var page = 0, failedShown = PAGE;
  var nf = new Intl.NumberFormat("en-US");
  var collator = new Intl.Collator(undefined, {numeric: true});

  E.forEach(function (e, j) { e.o = j; e.lc = (e.n + "\u0000" + e.i).toLowerCase(); });

  var counts = new Map();
  E.forEach(function (e) {
    if (e.s === "ok" && e.c != null) counts.set(e.c, (counts.get(e.c) || 0) + 1);
  });
  Array.from(counts).sort(function (a, b) {
    return b[1] - a[1] || collator.compare(a[0], b[0]);
  }).forEach(function (c) {
    var o = document.createElement("option");
    o.value = c[0];
    o.textContent = c[0] + " (" + nf.format(c[1]) + ")";
    ui.cls.appendChild(o);
  });

  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text != null) n.textContent = text;
    return n;
  }
  function pct(p) {
    return p == null ? "–" : (100 * p).toFixed(p >= 0.995 || p < 0.001 ? 2 : 1) + "%";
  }

  function cell(e, j) {
    var fig = el("figure"), src = e.t[j], href = e.h[j], body;
    if (src) {
      body = document.createElement("img");
      body.loading = "lazy";
      body.decoding = "async";
      body.alt = KINDS[j] + " of " + e.n;
      body.src = src;
    } else {
      body = el("span", "ph", "no " + KINDS[j]);
    }
    if (href) {
      var a = document.createElement("a");
      a.href = href;
      a.title = "open the full-size " + KINDS[j];
      a.appendChild(body);
      body = a;
    } else if (src) {
      var wrap = el("span", "ph");
      wrap.appendChild(body);
      body = wrap;
    }
    fig.appendChild(body);
    fig.appendChild(el("figcaption", null, KINDS[j]));
    return fig;
  }

  function card(e) {
    var c = el("article", "card");
    c.dataset.status = e.s;
    var name = el("div", "name", e.n);
    name.title = e.i;
    c.appendChild(name);
    var thumbs = el("div", "thumbs");
    thumbs.style.setProperty("--cols", KINDS.length);
    for (var j = 0; j < KINDS.length; j++) thumbs.appendChild(cell(e, j));
    c.appendChild(thumbs);
    var pred = el("div", "pred");
    pred.appendChild(el("span", "cls", e.c == null ? "?" : e.c)).title = e.c == null ? "" : e.c;
    if (e.k != null) pred.appendChild(el("span", "idx", "#" + e.k));
    pred.appendChild(el("span", "prob", pct(e.p)));
    c.appendChild(pred);
    var bar = el("div", "bar"), fill = el("i");
    fill.style.width = (e.p == null ? 0 : Math.max(0, Math.min(1, e.p)) * 100) + "%";
    bar.appendChild(fill);
    c.appendChild(bar);
    if (e.r != null) {
      var t = "the model's rank " + e.r + " class";
      if (e.top) t += "; its top class: " + e.top[0] + " " + pct(e.top[1]);
      c.appendChild(el("div", "note", t));
    }
    if (e.ig === false) {
      c.appendChild(el("div", "note warn", "integrated gradients did not converge"));
    }
    if (e.m) {
      var ul = el("ul", "more");
      e.m.forEach(function (m) {
        var li = el("li");
        li.appendChild(el("span", "muted", m[0] == null ? "" : "top " + m[0]));
        li.appendChild(el("span", null, m[1] == null ? "?" : m[1]));
        [[m[4], "map"], [m[5], "overlay"]].forEach(function (l) {
          if (!l[0]) return;
          var a = el("a", null, l[1]);
          a.href = l[0];
          li.appendChild(a);
        });
        li.appendChild(el("span", "p", pct(m[3])));
        ul.appendChild(li);
      });
      c.appendChild(ul);
    }
    return c;
  }

  function failedItem(e) {
    var li = el("li");
    var name = el("span", "name", e.n);
    name.title = e.i;
    li.appendChild(name);
    li.appendChild(el("span", "reason", e.e));
    return li;
  }

  function prob(e, none) { return e.p == null ? none : e.p; }
  var SORTS = {
    order: function (a, b) { return a.o - b.o; },
    "prob-desc": function (a, b) { return prob(b, -1) - prob(a, -1) || a.o - b.o; },
    "prob-asc": function (a, b) { return prob(a, 2) - prob(b, 2) || a.o - b.o; },
    name: function (a, b) { return collator.compare(a.n, b.n) || a.o - b.o; }
  };

  var ok = [], bad = [];
  function select() {
    var cls = ui.cls.value, st = ui.status.value, q = ui.name.value.trim().toLowerCase();
    ok = []; bad = [];
    for (var j = 0; j < E.length; j++) {
      var e = E[j];
      var good = e.s === "ok";
      if (st === "ok" && !good) continue;
      if (st === "error" && good) continue;
      if (cls && e.c !== cls) continue;
      if (q && e.lc.indexOf(q) < 0) continue;
      (good ? ok : bad).push(e);
    }
    ok.sort(SORTS[ui.sort.value] || SORTS.order);
    bad.sort(ui.sort.value === "name" ? SORTS.name : SORTS.order);
  }

  function render() {
    var pages = Math.max(1, Math.ceil(ok.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    var start = page * PAGE, slice = ok.slice(start, start + PAGE);
    var frag = document.createDocumentFragment();
    slice.forEach(function (e) { frag.appendChild(card(e)); });
    ui.cards.replaceChildren(frag);
    ui.empty.hidden = ok.length > 0 || ui.status.value === "error";
    ui.cards.hidden = ui.status.value === "error";
    ui.count.textContent = ok.length
      ? "images " + nf.format(start + 1) + "–" + nf.format(start + slice.length) + " of " +
        nf.format(ok.length) + (bad.length ? " · " + nf.format(bad.length) + " failed" : "")
      : (ui.status.value === "error" ? nf.format(bad.length) + " failed" :
         "no images" + (bad.length ? " · " + nf.format(bad.length) + " failed" : ""));
    ui.pager.hidden = pages <= 1;
    ui.pageNo.textContent = "page " + nf.format(page + 1) + " of " + nf.format(pages);
    ui.prev.disabled = page === 0;
    ui.next.disabled = page >= pages - 1;
    var list = document.createDocumentFragment();
    bad.slice(0, failedShown).forEach(function (e) { list.appendChild(failedItem(e)); });
    ui.failed.replaceChildren(list);
    ui.failedSection.hidden = bad.length === 0;
    ui.failedCount.textContent = nf.format(bad.length);
    var rest = bad.length - Math.min(bad.length, failedShown);
    ui.failedMore.hidden = rest <= 0;
    ui.failedMore.textContent = "show " + nf.format(Math.min(rest, PAGE)) + " more";
    document.body.dataset.ready = "1";
  }

  function update() { page = 0; failedShown = PAGE; select(); render(); }
  ui.cls.addEventListener("change", update);
  ui.status.addEventListener("change", update);
  ui.sort.addEventListener("change", update);
  ui.name.addEventListener("input", update);
  ui.prev.addEventListener("click", function () { page--; render(); window.scrollTo(0, 0); });
  ui.next.addEventListener("click", function () { page++; render(); window.scrollTo(0, 0); });
  ui.failedMore.addEventListener("click", function () { failedShown += PAGE; render(); });
  select();
  render();
})();
