// Sortable tables (click a header; numbers sort as numbers, by data-sort when a cell has one),
// then "ready" in #report-status: the page's script ran to the end.
(function () {
  function key(td) {
    var v = td.getAttribute('data-sort');
    if (v === null) v = td.textContent.trim();
    var n = parseFloat(v);
    return (v !== '' && !isNaN(n) && isFinite(v)) ? n : v.toLowerCase();
  }
  document.querySelectorAll('table.sortable').forEach(function (t) {
    t.querySelectorAll('th').forEach(function (th, i) {
      th.title = 'sort';
      th.addEventListener('click', function () {
        var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute('data-asc') !== '1';
        rows.sort(function (a, b) {
          var x = key(a.cells[i]), y = key(b.cells[i]);
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
        th.setAttribute('data-asc', asc ? '1' : '0');
      });
    });
  });
  var s = document.getElementById('report-status');
  if (s) s.textContent = 'ready';
})();
