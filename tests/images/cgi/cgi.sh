# A CGI/1.1 script, as any web server would run it: it answers by PATH_INFO.
#   /env        text/plain: every variable, sorted
#   /echo       text/plain: the body (stdin)
#   /form       an HTML form that POSTs to ./submit
#   /submit     reads the form, answers 303 to ./result?<the form>
#   /result     an HTML page showing QUERY_STRING
#   /redirect   a client redirect to https://example.org/elsewhere
#   /local      a local redirect to $SCRIPT_NAME/env
#   /created    201, JSON, custom headers, two cookies, a hop-by-hop header
#   /teapot     418
#   /bad        a header block with a line that is no header
#   /nohead     a body without a header block
#   anything else: a plain HTML page
case "$PATH_INFO" in
/env)
    printf 'Content-Type: text/plain\n\n'
    env | sort ;;
/echo)
    printf 'Content-Type: text/plain\n\n'
    cat ;;
/form)
    printf 'Content-Type: text/html\n\n'
    printf '<html><body><form method="post" action="%s/submit">' "$SCRIPT_NAME"
    printf '<input id="who" name="who"><button id="go" type="submit">Go</button></form></body></html>\n' ;;
/submit)
    body=$(head -c "${CONTENT_LENGTH:-0}")
    printf 'Status: 303 See Other\nLocation: %s/result?%s\n\n' "$SCRIPT_NAME" "$body" ;;
/result)
    printf 'Content-Type: text/html\n\n'
    printf '<html><body><p id="result">%s</p></body></html>\n' "$QUERY_STRING" ;;
/redirect)
    printf 'Location: https://example.org/elsewhere\n\n' ;;
/local)
    printf 'Location: %s/env\n\n' "$SCRIPT_NAME" ;;
/created)
    printf 'Status: 201 Created\r\nContent-Type: application/json\r\nX-Custom: yes\r\n'
    printf 'Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2\r\nConnection: close\r\n\r\n{"ok":true}' ;;
/teapot)
    printf "Status: 418 I'm a teapot\nContent-Type: text/plain\n\nshort and stout" ;;
/bad)
    printf 'Content-Type: text/plain\nthis is no header\n\nbody' ;;
/nohead)
    printf 'just a body' ;;
*)
    printf 'Content-Type: text/html\n\n<h1>Hello from %s</h1>\n' "$REQUEST_METHOD" ;;
esac
