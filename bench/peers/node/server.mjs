// Benchmark peer: a Node socket.io server implementing Edgeroom's `echo` contract
// (`echo`, `broadcast`, `whoami`; rooms from `auth.room`), so the same load
// generator can drive it, the socketioxide peer and Edgeroom's `echo` example.
import { createServer } from "node:http";
import { Server } from "socket.io";

// socket.io passes the ack callback, if the client asked for one, as the last argument.
const split = (args) =>
  typeof args.at(-1) === "function" ? [args.slice(0, -1), args.at(-1)] : [args, null];

const httpServer = createServer();
const io = new Server(httpServer); // path /socket.io/, no connection state recovery, default limits

io.on("connection", (socket) => {
  const { room: r } = socket.handshake.auth;
  const room = typeof r === "string" ? r : "/";
  socket.join(room);

  socket.on("echo", (...args) => {
    const [data, ack] = split(args);
    if (ack) ack(...data);
    else socket.emit("echo", ...data);
  });
  socket.on("broadcast", (...args) => {
    const [data, ack] = split(args);
    socket.to(room).emit("broadcast", ...data);
    ack?.();
  });
  socket.on("whoami", (...args) => {
    const [, ack] = split(args);
    ack?.({ conn: socket.id, room });
  });
});

httpServer.listen(Number(process.env.PORT ?? 3001), "127.0.0.1");
