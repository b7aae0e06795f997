import java.net.SocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import net.spy.memcached.AddrUtil;
import net.spy.memcached.BinaryConnectionFactory;
import net.spy.memcached.CASResponse;
import net.spy.memcached.CASValue;
import net.spy.memcached.ConnectionFactory;
import net.spy.memcached.ConnectionFactoryBuilder;
import net.spy.memcached.auth.AuthDescriptor;
import net.spy.memcached.auth.PlainCallbackHandler;
import net.spy.memcached.ConnectionObserver;
import net.spy.memcached.DefaultConnectionFactory;
import net.spy.memcached.MemcachedClient;

/**
 * Drives a memcached-compatible server with spymemcached, the client that
 * memcached-session-manager (msm) uses, doing the operations msm does plus the
 * rest of the common API.
 *
 * Usage: java -cp spymemcached.jar:. SpyCheck HOST PORT [text|binary [USER PASSWORD]]
 * (with USER and PASSWORD: the binary protocol authenticated with SASL PLAIN, as msm does)
 *
 * Prints one line per check, "PASS name" or "FAIL name: why", then
 * "SUMMARY passed/total". Exit code 0 only if every check passed.
 */
public final class SpyCheck {
    /** Bound on every single wait for a server reply. */
    private static final long TIMEOUT_SECONDS = 10;

    private final MemcachedClient client;
    private final String prefix = "spy:" + Long.toHexString(System.nanoTime()) + ":";
    private final AtomicInteger connectionsLost = new AtomicInteger();
    private int passed;
    private int total;

    private SpyCheck(MemcachedClient client) {
        this.client = client;
    }

    /** One check: throws AssertionError (or anything else) on failure. */
    private interface Check {
        void run() throws Exception;
    }

    private void check(String name, Check body) {
        total++;
        try {
            body.run();
            passed++;
            System.out.println("PASS " + name);
        } catch (Throwable t) {
            String why = t.getMessage() == null ? t.toString() : t.getClass().getSimpleName() + ": " + t.getMessage();
            System.out.println("FAIL " + name + ": " + why.replace('\n', ' '));
        }
        System.out.flush();
    }

    private static void require(boolean condition, String message) {
        if (!condition) {
            throw new AssertionError(message);
        }
    }

    private static <T> T await(Future<T> future) throws Exception {
        return future.get(TIMEOUT_SECONDS, TimeUnit.SECONDS);
    }

    private static byte[] bytes(int size, long seed) {
        byte[] data = new byte[size];
        new Random(seed).nextBytes(data);
        return data;
    }

    private String key(String name) {
        return prefix + name;
    }

    private void runAll() {
        check("get-miss", () -> require(client.get(key("never-set")) == null, "get of a never-set key returned a value"));

        byte[] session = bytes(206, 1);
        check("set-with-expiry", () -> require(await(client.set(key("session"), 3600, session)), "set returned false"));

        check("get-hit-bytes", () -> {
            Object got = client.get(key("session"));
            require(got instanceof byte[], "get returned " + got);
            require(Arrays.equals((byte[]) got, session), "get returned different bytes");
        });

        // msm's read-only request: add <id> 0 5 1 as an existence check.
        check("add-live-key-false-untouched", () -> {
            require(!await(client.add(key("session"), 5, new byte[] {1})), "add on a live key returned true");
            Object got = client.get(key("session"));
            require(got instanceof byte[] && Arrays.equals((byte[]) got, session), "add on a live key changed the value");
        });

        check("add-missing-key-true", () -> {
            byte[] value = bytes(20, 2);
            require(await(client.add(key("validity"), 1800, value)), "add on a missing key returned false");
            Object got = client.get(key("validity"));
            require(got instanceof byte[] && Arrays.equals((byte[]) got, value), "value stored by add not returned");
        });

        check("delete", () -> {
            require(await(client.delete(key("validity"))), "delete of a live key returned false");
            require(client.get(key("validity")) == null, "deleted key still readable");
            require(!await(client.delete(key("validity"))), "delete of a missing key returned true");
        });

        // msm lockingMode: add lock:<id> 0 5 "locked", contended add fails, delete releases.
        check("lock-add-delete", () -> {
            String lock = key("lock:session");
            require(await(client.add(lock, 5, "locked")), "first lock add returned false");
            require(!await(client.add(lock, 5, "locked")), "second lock add returned true");
            require(await(client.delete(lock)), "lock delete returned false");
            require(await(client.add(lock, 5, "locked")), "lock add after release returned false");
        });

        check("get-bulk", () -> {
            Map<String, byte[]> expected = new HashMap<>();
            List<String> keys = new ArrayList<>();
            for (int i = 0; i < 200; i++) {
                String k = key("bulk:" + i);
                byte[] v = bytes(1 + i * 13 % 500, 100 + i);
                expected.put(k, v);
                keys.add(k);
                require(await(client.set(k, 0, v)), "set " + k + " returned false");
            }
            for (int i = 0; i < 20; i++) {
                keys.add(key("bulk:missing:" + i));
            }
            Map<String, Object> got = client.getBulk(keys);
            require(got.size() == expected.size(), "getBulk returned " + got.size() + " of " + expected.size() + " keys");
            for (Map.Entry<String, byte[]> e : expected.entrySet()) {
                Object v = got.get(e.getKey());
                require(v instanceof byte[] && Arrays.equals((byte[]) v, e.getValue()), "getBulk wrong value for " + e.getKey());
            }
        });

        check("pipeline-1000-sets-then-gets", () -> {
            int n = 1000;
            List<Future<Boolean>> sets = new ArrayList<>(n);
            for (int i = 0; i < n; i++) {
                sets.add(client.set(key("pipe:" + i), 3600, ("value-" + i + "-" + prefix).getBytes(StandardCharsets.UTF_8)));
            }
            for (int i = 0; i < n; i++) {
                require(await(sets.get(i)), "pipelined set " + i + " returned false");
            }
            List<Future<Object>> gets = new ArrayList<>(n);
            for (int i = 0; i < n; i++) {
                gets.add(client.asyncGet(key("pipe:" + i)));
            }
            for (int i = 0; i < n; i++) {
                Object v = await(gets.get(i));
                byte[] want = ("value-" + i + "-" + prefix).getBytes(StandardCharsets.UTF_8);
                require(v instanceof byte[] && Arrays.equals((byte[]) v, want), "pipelined get " + i + " returned a wrong value");
            }
        });

        check("incr-decr", () -> {
            String k = key("counter");
            require(client.incr(k, 1) == -1, "incr of a missing key did not return -1");
            require(await(client.set(k, 0, "10")), "set counter returned false");
            require(client.incr(k, 5) == 15, "incr 10+5 != 15");
            require(client.decr(k, 3) == 12, "decr 15-3 != 12");
            require(client.decr(k, 100) == 0, "decr below zero did not floor at 0");
            require(client.incr(k, 7, 0) == 7, "incr 0+7 != 7");
        });

        check("cas", () -> {
            String k = key("cas");
            require(await(client.set(k, 0, "v1")), "set returned false");
            CASValue<Object> first = client.gets(k);
            require(first != null && "v1".equals(first.getValue()), "gets returned " + first);
            require(client.cas(k, first.getCas(), "v2") == CASResponse.OK, "cas with a fresh token was not OK");
            require(client.cas(k, first.getCas(), "v3") == CASResponse.EXISTS, "cas with a stale token was not EXISTS");
            require("v2".equals(client.get(k)), "value after cas is not v2");
            require(client.cas(key("cas-missing"), 1L, "x") == CASResponse.NOT_FOUND, "cas on a missing key was not NOT_FOUND");
        });

        check("touch", () -> {
            require(await(client.touch(key("session"), 7200)), "touch of a live key returned false");
            require(!await(client.touch(key("never-set"), 7200)), "touch of a missing key returned true");
            Object got = client.get(key("session"));
            require(got instanceof byte[] && Arrays.equals((byte[]) got, session), "value changed by touch");
        });

        check("expiry", () -> {
            String k = key("short");
            require(await(client.set(k, 1, "soon gone")), "set returned false");
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
            while (client.get(k) != null) {
                require(System.nanoTime() < deadline, "item with expiry 1s still there after 5s");
                Thread.sleep(50);
            }
        });

        check("large-value", () -> {
            byte[] big = bytes(500 * 1024, 3);
            require(await(client.set(key("big"), 0, big)), "set of 500 KiB returned false");
            Object got = client.get(key("big"));
            require(got instanceof byte[] && Arrays.equals((byte[]) got, big), "500 KiB value came back different");
        });

        // spymemcached drops the connection on ERROR/CLIENT_ERROR/SERVER_ERROR.
        check("no-connection-lost", () -> require(connectionsLost.get() == 0, connectionsLost.get() + " connection(s) lost"));
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2 || args.length > 5 || args.length == 4) {
            System.err.println("usage: SpyCheck HOST PORT [text|binary [USER PASSWORD]]");
            System.exit(2);
        }
        String mode = args.length >= 3 ? args[2] : "text";
        ConnectionFactory factory;
        if (args.length == 5 && mode.equals("binary")) {
            factory = new ConnectionFactoryBuilder()
                .setProtocol(ConnectionFactoryBuilder.Protocol.BINARY)
                .setAuthDescriptor(new AuthDescriptor(new String[] {"PLAIN"}, new PlainCallbackHandler(args[3], args[4])))
                .build();
        } else if (mode.equals("text")) {
            factory = new DefaultConnectionFactory();
        } else if (mode.equals("binary")) {
            factory = new BinaryConnectionFactory();
        } else {
            System.err.println("mode must be text or binary, not " + mode);
            System.exit(2);
            return;
        }
        MemcachedClient client = new MemcachedClient(factory, AddrUtil.getAddresses(args[0] + ":" + args[1]));
        SpyCheck spy = new SpyCheck(client);
        client.addObserver(new ConnectionObserver() {
            @Override
            public void connectionEstablished(SocketAddress address, int reconnectCount) {
            }

            @Override
            public void connectionLost(SocketAddress address) {
                spy.connectionsLost.incrementAndGet();
            }
        });
        try {
            spy.runAll();
        } finally {
            client.shutdown(TIMEOUT_SECONDS, TimeUnit.SECONDS);
        }
        System.out.println("SUMMARY " + spy.passed + "/" + spy.total);
        System.exit(spy.passed == spy.total ? 0 : 1);
    }
}
