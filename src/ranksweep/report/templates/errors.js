// First in <head>: any script error is written into the page (the tests read it from the DOM).
window.__rsErrors = [];
window.onerror = function (msg, src, line) {
  window.__rsErrors.push(msg + ' @' + line);
  var e = document.getElementById('js-errors');
  if (e) { e.style.display = 'block'; e.textContent += msg + ' @' + line + '\n'; }
};
