-- 0100_customer_phone.sql - the customer-phone example: an optional phone number per customer.
ALTER TABLE customers ADD COLUMN phone TEXT;
