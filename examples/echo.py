"""The ten-line echo server from the README."""
import iocport


def on_message(conn, msg):
    conn.send(msg)


server = iocport.Server(on_message, framing=iocport.LengthPrefixed(4))
print("listening on %s:%d" % server.listen("127.0.0.1", 9000), flush=True)
server.serve_forever()
