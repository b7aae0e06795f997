// Prints the Java serialization streams that SessionInspectionTests/JavaStreamVectorTests.swift
// embeds as hex: JDK classes the msm fixtures do not contain, and an msm attributes block
// with an attribute that fails with NotSerializableException.
//
// Run from the repository root with any JDK 11+ (single-file source launch, no build):
//     java Tests/vectors/JavaStreamVectors.java
// The vectors in the Swift file were printed by OpenJDK 17.0.15.
import java.io.*;
import java.math.BigDecimal;
import java.util.*;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

public class JavaStreamVectors {
    /// Serializable, but holds an object that is not: writing it fails half-way.
    static class Holder implements Serializable {
        private static final long serialVersionUID = 1L;
        String label = "cart";
        Object payload = new Object();
    }

    static String hex(byte[] bytes) {
        StringBuilder text = new StringBuilder();
        for (byte b : bytes) text.append(String.format("%02x", b));
        return text.toString();
    }

    static void print(String name, Object... objects) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
            for (Object object : objects) out.writeObject(object);
        }
        System.out.println(name + " " + hex(bytes.toByteArray()));
    }

    public static void main(String[] args) throws IOException {
        print("hashSet", new HashSet<>(List.of("x")));
        print("linkedHashSet", new LinkedHashSet<>(List.of("b", "a")));
        print("treeSet", new TreeSet<>(List.of("b", "a")));
        TreeMap<String, Integer> treeMap = new TreeMap<>();
        treeMap.put("b", 2);
        treeMap.put("a", 1);
        print("treeMap", treeMap);
        LinkedHashMap<String, Long> linkedHashMap = new LinkedHashMap<>();
        linkedHashMap.put("z", 26L);
        linkedHashMap.put("y", 25L);
        print("linkedHashMap", linkedHashMap);
        Hashtable<String, String> hashtable = new Hashtable<>();
        hashtable.put("k", "v");
        print("hashtable", hashtable);
        ConcurrentHashMap<String, Boolean> concurrentHashMap = new ConcurrentHashMap<>();
        concurrentHashMap.put("on", true);
        print("concurrentHashMap", concurrentHashMap);
        print("linkedList", new LinkedList<>(List.of(1, 2)));
        print("arrayDeque", new ArrayDeque<>(List.of("head", "tail")));
        print("vector", new Vector<>(List.of("v1", "v2")));
        print("emptyList", Collections.emptyList());
        print("emptyMap", Collections.emptyMap());
        print("unmodifiableList", Collections.unmodifiableList(new ArrayList<>(List.of("u"))));
        print("singletonList", Collections.singletonList("only"));
        print("arraysAsList", Arrays.asList("p", "q"));
        print("enumConstant", TimeUnit.SECONDS);
        print("enumSet", EnumSet.of(TimeUnit.SECONDS, TimeUnit.MINUTES));
        EnumMap<TimeUnit, String> enumMap = new EnumMap<>(TimeUnit.class);
        enumMap.put(TimeUnit.DAYS, "d");
        print("enumMap", enumMap);
        print("boxes", 'x', (short) -2, (byte) 7, 1.5f, Double.NaN);
        print("classObject", String.class);
        print("intArray", (Object) new int[] {1, -1});
        print("nestedArray", (Object) new String[][] {{"a"}, {}});
        Object[] cycle = new Object[1];
        cycle[0] = cycle;
        print("selfReferencingArray", (Object) cycle);
        ArrayList<Object> list = new ArrayList<>();
        list.add(list);
        print("selfReferencingList", list);
        print("bigDecimal", new BigDecimal("12.50"));
        print("date", new Date(-1L));
        print("nul", "a\u0000b");

        // The attributes block msm writes (JavaSerializationTranscoder.writeAttributes)
        // for {"ok" = "fine", "cart" = Holder, "after" = 5}, where Holder fails.
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
            out.writeObject(3);
            out.writeObject("ok");
            out.writeObject("fine");
            out.writeObject("cart");
            try {
                out.writeObject(new Holder());
            } catch (NotSerializableException e) {
                out.writeObject("___NOT_SERIALIZABLE_EXCEPTION___");
            }
            out.writeObject("after");
            out.writeObject(5);
        }
        System.out.println("msmAttributesWithNotSerializable " + hex(bytes.toByteArray()));
    }
}
