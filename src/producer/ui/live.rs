//! Pages that show running work update without a reload: such a page wraps what changes in an
//! element with an id and `data-live="on"`, and loads `/ui/static/live.js` (a static file, as the
//! CSP wants), which fetches the same URL every 2 s and swaps that element's contents for the
//! fresh page's. When the fresh element says `data-live="off"` (the work is done) it stops.
//! Without JavaScript a `<noscript>` meta refresh reloads the page instead.

use axum::response::Response;
use maud::{Markup, html};

use super::BASE;

/// The `<head>` markup of a page that is `live` (nothing otherwise).
pub(crate) fn head(live: bool) -> Markup {
    html! {
        @if live {
            noscript { meta http-equiv="refresh" content="5"; }
            script src={ (BASE) "/static/live.js" } defer {}
        }
    }
}

/// The `data-live` value of a live region.
pub(crate) fn marker(live: bool) -> &'static str {
    if live { "on" } else { "off" }
}

/// `GET /ui/static/live.js`.
pub(crate) async fn script() -> Response {
    super::static_file("text/javascript; charset=utf-8", LIVE_JS)
}

const LIVE_JS: &str = r#"(function () {
  function tick() {
    var el = document.querySelector('[data-live="on"]');
    if (!el) return;
    fetch(location.href, {credentials: 'same-origin'})
      .then(function (r) {
        if (r.ok && !r.redirected && (r.headers.get('content-type') || '').indexOf('text/html') === 0) return r.text();
        throw r;
      })
      .then(function (t) {
        var fresh = new DOMParser().parseFromString(t, 'text/html').getElementById(el.id);
        if (fresh) {
          el.innerHTML = fresh.innerHTML;
          el.setAttribute('data-live', fresh.getAttribute('data-live') || 'off');
        }
      })
      .catch(function () {})
      .then(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 2000);
})();
"#;
