SELECT 'it''s ?', E'\' ?', $x$ :no $x$, "q?"::text, a[1:2] FROM t -- ? :c
 WHERE x = ? /* :d /* ? */ */