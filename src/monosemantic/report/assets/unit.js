// A unit page's examples are stored gzipped (base64) in #examples-data: they are most of the
// page's weight and compress ~5×. This inflates them into #examples. The markup was escaped
// when the site was built; nothing here interprets the text.
(function () {
  "use strict";
  var data = document.getElementById("examples-data");
  var target = document.getElementById("examples");
  var bytes = Uint8Array.from(atob(data.textContent.trim()), function (c) { return c.charCodeAt(0); });
  var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  new Response(stream).text().then(function (html) {
    target.innerHTML = html;
    target.setAttribute("data-ready", "");
  });
})();
