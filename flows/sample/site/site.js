document.querySelectorAll('.share-box a').forEach(function (a) { a.addEventListener('click', function (e) { e.preventDefault(); }); });
