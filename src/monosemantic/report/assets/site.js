// The units table: sort, filter and page the rows embedded in #unit-data, client-side, so the
// index stays fast with tens of thousands of units. Cells are set with textContent only: the
// explanations come from text that nobody vetted.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("unit-data").textContent);
  var col = {};
  data.columns.forEach(function (name, i) { col[name] = i; });
  var rows = data.rows.map(function (r) {
    r.haystack = [r[col.dictionary], r[col.kind], r[col.index], r[col.explanation] || "", r[col.explanation_error] || "",
                  r[col.best_proxy] || ""].join(" ").toLowerCase();
    return r;
  });
  var PAGE = 50, page = 0, sortKey = "score", sortDir = -1, shown = rows;  // best explained first
  var $ = function (id) { return document.getElementById(id); };
  var tbody = document.querySelector("#units-table tbody");

  function fmt(v, digits) {
    if (v === null || v === undefined) return "–";
    if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(1);
    return digits === undefined ? String(+v.toPrecision(3)) : v.toFixed(digits);
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function scoreClass(v) {
    return v === null ? "num" : "num score " + (v >= 0.5 ? "good" : v >= 0.2 ? "fair" : "poor");
  }

  function apply() {
    var q = $("q").value.trim().toLowerCase(), dict = $("dictionary").value, kind = $("kind").value;
    var only = $("interpreted").checked;
    shown = rows.filter(function (r) {
      return (!dict || r[col.dictionary] === dict) && (!kind || r[col.kind] === kind) &&
             (!only || r[col.page]) && (!q || r.haystack.indexOf(q) !== -1);
    });
    if (sortKey !== null) {
      var i = col[sortKey];
      shown.sort(function (a, b) {
        var x = a[i], y = b[i];
        if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;   // missing last
        if (y === null || y === undefined) return -1;
        return (typeof x === "string" ? x.localeCompare(y) : x - y) * sortDir;
      });
    }
    page = 0;
    render();
  }

  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(page, pages - 1);
    var frag = document.createDocumentFragment();
    shown.slice(page * PAGE, (page + 1) * PAGE).forEach(function (r) {
      var tr = document.createElement("tr");
      cell(tr, r[col.dictionary]);   // sorts by "order": the site's order of dictionaries, not by name
      var unit = cell(tr, "", "num");
      var label = r[col.kind] + " " + r[col.index];
      if (r[col.page]) {
        var a = document.createElement("a");
        a.href = "pages/" + r[col.page];
        a.textContent = label;
        unit.appendChild(a);
      } else {
        unit.textContent = label;
      }
      cell(tr, fmt(r[col.density]), "num");
      cell(tr, fmt(r[col.max_activation]), "num");
      cell(tr, fmt(r[col.score], 2), scoreClass(r[col.score]));
      cell(tr, fmt(r[col.control], 2), "num");
      if (r[col.explanation]) cell(tr, r[col.explanation]);
      else cell(tr, r[col.explanation_error] || "", "empty");
      var f1 = r[col.best_proxy_f1];
      cell(tr, r[col.best_proxy] ? r[col.best_proxy] + " (F1 " + (f1 === null ? "–" : f1.toFixed(2)) + ")" : "",
           f1 !== null && f1 < 0.5 ? "weak" : "");
      frag.appendChild(tr);
    });
    tbody.replaceChildren(frag);
    $("count").textContent = shown.length + " of " + rows.length + " units";
    $("pageinfo").textContent = "page " + (page + 1) + " of " + pages;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }

  document.querySelectorAll("#units-table th[data-key]").forEach(function (th) {
    th.tabIndex = 0;
    function sort() {
      var key = th.getAttribute("data-key");
      sortDir = sortKey === key ? -sortDir : (th.classList.contains("num") ? -1 : 1);  // numbers: largest first
      sortKey = key;
      document.querySelectorAll("#units-table th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      apply();
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
  });
  var timer;
  $("q").addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 120); });
  ["dictionary", "kind", "interpreted"].forEach(function (id) { $(id).addEventListener("change", apply); });
  $("prev").addEventListener("click", function () { page--; render(); });
  $("next").addEventListener("click", function () { page++; render(); });
  document.querySelector('#units-table th[data-key="' + sortKey + '"]').setAttribute("aria-sort", "descending");
  apply();
})();
